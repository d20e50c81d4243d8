"""Coupling inside other trainers: `trl.py` adds introspect's explanation loss and behavioural KL to a Hugging Face
(TRL) trainer's own loss."""
