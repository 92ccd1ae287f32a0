"""How a loaded base model becomes trainable: the ``_target_`` of each ``conf/peft/*.yaml``.

    model = hydra.utils.instantiate(cfg.peft, model=base_model)   # lora -> PeftModel, none -> all weights train
"""

from __future__ import annotations


def lora(model, r: int, lora_alpha: int, lora_dropout: float, target_modules: list[str], bias: str = "none",
         skip_lower_layers: float = 0.0):
    from peft import LoraConfig, get_peft_model

    layers = None  # every decoder layer; else the upper ones only (their backward stops there)
    if skip_lower_layers:
        n = model.config.num_hidden_layers
        layers = list(range(min(round(skip_lower_layers * n), n - 1), n))  # at least the top layer
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                        bias=bias, task_type="CAUSAL_LM", layers_to_transform=layers)
    return get_peft_model(model, config)


def full(model, freeze_embeddings: bool = False):
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(False)
    return model
