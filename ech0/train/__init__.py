"""The training stage: ``ech0 train`` / ``python -m ech0.train`` (entry: cli.py, the job: recipe.py).

    python -m ech0.train +preset=lora
    from ech0.train.recipe import fit;  result = fit(cfg, ctx)

Parts: data.py (rows -> token ids, batch order), loop.py (loss, held-out loss, LR schedule),
packing.py (padding-free batches), checkpoint.py, distributed.py (torchrun), precision.py (measured
bf16 choice), adapters.py (the ``_target_`` of conf/peft/*.yaml).
"""
