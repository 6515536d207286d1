"""TRL 1.16 / transformers side of the peer benchmark (runs in benchmarks/peers/.venvs/trl; see common.py).

    .venvs/trl/bin/python trl_driver.py MODEL_DIR      # then JSON commands on stdin

``sample``: transformers ``generate`` (``num_return_sequences=N``; EOS disabled with
``min_new_tokens = max_new_tokens``). ``rl``: one step of ``RLOOTrainer`` (``algo="rloo"``: KL in the reward,
leave-one-out baseline) or ``GRPOTrainer`` (``algo="grpo"``: KL in the loss), β = 0.04, AdamW, one update per
batch (``per_device_train_batch_size`` counts completions: P·S), T = 1, model given as the saved directory
(the reference model is reloaded from it), ``processing_class`` an integer word-level tokenizer whose EOS id
lies outside the model's vocabulary (never sampled: EOS disabled). Each trainer's ``train()`` runs in its own
thread, parked in a callback between steps, so steps of several trainers interleave with the other drivers';
a step is timed from the command to the callback's ``on_step_end``. TRL exposes no separate update phase.
"""

from __future__ import annotations

import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def int_tokenizer(vocab: int):
    """Decimal words <-> ids 0..vocab-1; ``<eos>`` = vocab (outside the model: never sampled), pad = id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {str(i): i for i in range(vocab)}
    words.update({"<eos>": vocab, "<unk>": vocab + 1})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="0")


def main() -> None:
    model_dir = Path(sys.argv[1])
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback

    tokenizer = int_tokenizer(common.MODEL["vocab"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    scratch = tempfile.TemporaryDirectory(prefix="peers_trl_", ignore_cleanup_errors=True)
    workdir = scratch.name  # the trainers' output_dir (nothing is saved there)
    text = lambda rows: [" ".join(map(str, r)) for r in rows]

    def sample(cmd):
        shape = common.SHAPES[cmd["shape"]]
        n, new = cmd["n"], cmd["max_new_tokens"]
        prompts = torch.tensor(common.prompt_ids(shape, 0), dtype=torch.long)
        torch.manual_seed(cmd["seed"])
        with torch.inference_mode():
            t, c = time.perf_counter(), time.process_time()
            out = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=new,
                min_new_tokens=new,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=0,
                **common.SAMPLING,
            )
            wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert out.shape == (shape.prompts * n, shape.prompt_len + new), out.shape
        return {"wall": wall, "cpu": cpu}

    def reward_fn(prompts, completions, completion_ids=None, **kw):
        return [common.reward_of_tokens(list(ids)) for ids in completion_ids]

    class Gate(TrainerCallback):
        """Parks the trainer's thread between steps: waits for a command, times the step, posts the result."""

        def __init__(self):
            self.commands, self.results = queue.Queue(), queue.Queue()
            self.t0 = self.c0 = 0.0

        def _wait(self, control):
            cmd = self.commands.get()
            if cmd is None:
                control.should_training_stop = True
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_begin(self, args, state, control, **kw):
            self._wait(control)

        def on_step_end(self, args, state, control, **kw):
            self.results.put({"wall": time.perf_counter() - self.t0, "cpu": time.process_time() - self.c0})
            self._wait(control)

    trainers = {}

    def make_trainer(algo, shape):
        s = shape.rl_samples
        rows = [p for seed in range(1, 201) for p in text(common.prompt_ids(shape, seed))]
        dataset = datasets.Dataset.from_dict({"prompt": rows})
        kw = dict(
            output_dir=f"{workdir}/{algo}_{shape.name}",
            per_device_train_batch_size=shape.prompts * s,
            gradient_accumulation_steps=1,
            num_generations=s,
            max_completion_length=shape.new_tokens,
            steps_per_generation=1,
            num_iterations=1,
            beta=common.BETA,
            learning_rate=common.LR,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_steps=10**6,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            seed=0,
            shuffle_dataset=False,
            disable_dropout=True,
            model_init_kwargs={"dtype": torch.float32},
            dataloader_num_workers=0,
        )
        config_cls, trainer_cls = {
            "rloo": (trl.RLOOConfig, trl.RLOOTrainer),
            "grpo": (trl.GRPOConfig, trl.GRPOTrainer),
        }[algo]
        gate = Gate()
        trainer = trainer_cls(
            model=str(model_dir),
            reward_funcs=reward_fn,
            args=config_cls(**kw),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[gate],
        )
        thread = threading.Thread(target=trainer.train, daemon=True)
        thread.start()
        return gate, thread

    def rl(cmd):
        shape = common.SHAPES[cmd["shape"]]
        key = (cmd["algo"], shape.name)
        if cmd["algo"] not in ("rloo", "grpo"):
            raise ValueError(f"trl runs algo 'rloo' or 'grpo', not {cmd['algo']!r}")
        if key not in trainers:
            trainers[key] = make_trainer(cmd["algo"], shape)
        gate, thread = trainers[key]
        gate.commands.put(cmd)
        while True:
            try:
                return gate.results.get(timeout=5)
            except queue.Empty:
                if not thread.is_alive():
                    raise RuntimeError(f"the {cmd['algo']} trainer's thread ended (see stderr)") from None

    versions = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    common.serve(versions, sample, rl)
    for gate, thread in trainers.values():
        gate.commands.put(None)
        thread.join(timeout=60)
    scratch.cleanup()


if __name__ == "__main__":
    main()
