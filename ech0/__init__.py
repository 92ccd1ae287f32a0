"""ech0: an MLflow-centred pipeline for fine-tuning causal language models.

    python -m ech0.train +preset=lora        # or: ech0 train +preset=lora
"""

__version__ = "0.1.0"
