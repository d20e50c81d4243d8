#!/bin/bash
# Adversarial user cases for issue 23 (tiny model, ~1 min): each `t RC command` expects exit code RC; prints every
# traceback and wrong exit code, then the counts.   bash tools/adversarial_cases.sh  (from the repository root)
I=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/introspect
D=/tmp/adv/work; rm -rf $D; mkdir -p $D; cd $D
DATA=/tmp/adv/data
"$(dirname "$I")/python" - <<'PY'
import csv, os, json
root='/tmp/adv/data/mmlu/val'; os.makedirs(root, exist_ok=True)
with open(root+'/misc_val.csv','w',newline='') as f:
    w=csv.writer(f)
    for i in range(12): w.writerow([f"Question {i}?", "a","b","c","d","ABCD"[i%4]])
os.makedirs('/tmp/adv/data/mmlu/test', exist_ok=True)
with open('/tmp/adv/data/mmlu/test/misc_test.csv','w',newline='') as f:
    w=csv.writer(f)
    for i in range(8): w.writerow([f"T question {i}?", "a","b","c","d","ABCD"[i%4]])
open('/tmp/adv/work/dup.csv','w').write("id,request,label\nr1,a,benign\nr1,b,harmful\nr2,c,harmful\n")
open('/tmp/adv/work/broken.jsonl','w').write('{"id":1,"text":"x","verdict":"NTA"}\n{"id":2,"text":"y","verdict":"YTA"}\n{"id":3,"te\n')
open('/tmp/adv/work/bom.csv','wb').write("\ufeffid,request,label\n".encode()+b"a,one,benign\nb,two,harmful\nc,three,benign\nd,four,harmful\n")
open('/tmp/adv/work/empty.jsonl','w').write('')
open('/tmp/adv/work/gold.jsonl','w').write(json.dumps({"pair_id":"a","changed":False,"letter":"A"})+"\n")
open('/tmp/adv/work/pred.jsonl','w').write(json.dumps({"pair_id":"a","text":"junk"})+"\n")
open('/tmp/adv/work/dupkey.yaml','w').write("run_dir: r\nmodel: tiny-random\nmodel: other\n")
os.makedirs('/tmp/adv/work/notok', exist_ok=True)
json.dump({"model_type":"llama","vocab_size":100,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":2}, open('/tmp/adv/work/notok/config.json','w'))
cfg={"run_dir":"/tmp/adv/work/run","model":"tiny-random","data_root":"/tmp/adv/data","train_split":"val","train_n":8,"precision":"fp32",
     "train":{"steps":2,"checkpoint_every":1,"probe_every":0,"explanation_per_step":4,"behavior_per_step":4,"lr":1e-3},
     "evaluate":{"split":"test","n":6,"n_boot":20,"max_new_tokens":6,"batch_size":8,"baselines":False}}
import yaml; open('/tmp/adv/work/run.yaml','w').write(yaml.safe_dump(cfg))
PY
n=0; bad=0; tb=0
t() { exp=$1; shift; n=$((n+1)); out=$("$@" 2>&1); rc=$?; if echo "$out" | grep -q Traceback; then tb=$((tb+1)); echo "TRACEBACK: $*"; fi
      if [ "$rc" != "$exp" ]; then bad=$((bad+1)); echo "RC $rc (want $exp): $*"; echo "$out" | tail -3; fi; }
t 2 $I score --gold gold.jsonl --pred pred.jsonl --n-boot -5
t 2 $I score --gold empty.jsonl --pred pred.jsonl --json
t 0 $I score --gold gold.jsonl --pred pred.jsonl --json --n-boot 5 --out $D/new/dir/x.jsonl
mkdir -p existing
t 2 $I sample --model tiny-random --data-root $DATA --n 4 --out existing
t 2 $I sample --model tiny-random --data-root $DATA --n 0 --out s.parquet
t 2 $I sample --model tiny-random --data-root $DATA --task refusal --split all --n 2 --task-option file=dup.csv --out d.parquet
t 2 $I sample --model tiny-random --data-root $DATA --task aita --split all --n 2 --task-option file=broken.jsonl --out b.parquet
t 0 $I sample --model tiny-random --data-root $DATA --task refusal --split all --n 2 --task-option file=bom.csv --precision fp32 --out bom.parquet
t 2 $I sample --model tiny-random --data-root $DATA --task aita --n 2 --task-option min_chars=abc --out x.parquet
t 2 $I sample --model $D/notok --data-root $DATA --n 2 --out x.parquet
t 2 $I run dupkey.yaml
t 2 $I run run.yaml --set train.max_grad_norm=-1
t 2 $I run run.yaml --set train.warmup_steps=-5
t 2 $I run run.yaml --set train.weights.explanation=0 train.weights.behavior_kl=0
t 2 $I run run.yaml --set train.schedule=cosin
t 2 $I run run.yaml --set evaluate.n_boot=0
t 2 $I run run.yaml --set "train.lora.target_modules=[foo]"
test -d run && echo "NOTE: run dir exists after rejected runs: $(ls run)"
t 0 $I run run.yaml
t 2 $I run run.yaml --set evaluate.n=5000 train.lr=0.5
t 2 $I evaluate $D/nothing
head -c 100 run/train/checkpoints/step_000002/adapter_model.safetensors > /tmp/adv/trunc && cp /tmp/adv/trunc run/train/checkpoints/step_000002/adapter_model.safetensors
t 0 $I evaluate run
t 0 $I run run.yaml
$I label --behavior run/eval/m0_behavior.parquet --out L.parquet >/dev/null 2>&1
t 0 $I audit init L.sqlite --pairs run/eval/m0_behavior.parquet --labels L.parquet
t 0 $I audit add L.sqlite tiny-random --tag v1 --precision fp32 --n-boot 5 --max-new-tokens 4 --witness W.jsonl
t 0 $I audit add L.sqlite run/train/checkpoints/step_000002 --tag v2 --precision fp32 --n-boot 5 --max-new-tokens 4 --witness W.jsonl
t 2 $I audit add L.sqlite tiny-random --tag v3 --n-boot 0
t 2 $I audit verify L.sqlite --head garbage
sqlite3 L.sqlite "DELETE FROM verdicts WHERE version_id=(SELECT max(id) FROM versions); DELETE FROM versions WHERE id=(SELECT max(id) FROM versions);" 2>/dev/null || "$(dirname "$I")/python" -c "
import sqlite3; c=sqlite3.connect('L.sqlite'); c.execute('DELETE FROM verdicts WHERE version_id=(SELECT max(id) FROM versions)'); c.execute('DELETE FROM versions WHERE id=(SELECT max(id) FROM versions)'); c.commit()"
t 2 $I audit verify L.sqlite --witness W.jsonl
t 2 $I audit verify L.sqlite --witness missing.jsonl
# SIGINT during a run (a background job of a non-interactive shell ignores SIGINT, so this line only shows the
# run finishing; tests/test_faults.py::test_sigint_during_a_run_is_one_line_and_the_run_resumes is the real check)
rm -rf run2; sed 's#/tmp/adv/work/run#/tmp/adv/work/run2#' run.yaml > run2.yaml
( $I run run2.yaml --set train.steps=3000 train.checkpoint_every=1000 > sig.out 2> sig.err & pid=$!; sleep 25; kill -INT $pid; wait $pid; echo $? > sig.rc )
n=$((n+1)); if grep -q Traceback sig.err; then tb=$((tb+1)); echo "TRACEBACK on SIGINT"; tail -3 sig.err; fi; echo "SIGINT rc $(cat sig.rc): $(grep -a interrupted sig.err)"
echo "cases $n, wrong exit code $bad, tracebacks $tb"
