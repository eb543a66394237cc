"""transformers' Trainer with the ufp4 backend, the documented way (docs/backend.md, "HF Trainer"): compile
the model in place with ``model.compile(backend="ufp4", options=...)`` before handing it to the Trainer.

``TrainingArguments(torch_compile_backend="ufp4")`` cannot carry it: accelerate, which the Trainer compiles
through, accepts only the backend names of its own ``DynamoBackend`` enum."""

import logging

import pytest
import torch

from ufp4_compile.backend import register

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def test_trainer_trains_a_compiled_llama(tmp_path, caplog):
    register()
    torch._dynamo.reset()
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    # Caches off: on an FX-graph cache hit (an earlier test compiled the same graph) the pass logs nothing.
    model.compile(backend="ufp4", options={"recipe": "ufp4", "keep_first": 1, "force_disable_caches": True})
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=2,
                                          per_device_train_batch_size=4, report_to=[], save_strategy="no",
                                          disable_tqdm=True)
    caplog.set_level(logging.DEBUG, logger="ufp4_compile.passes.rewrite_matmuls")
    result = transformers.Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    rows = [r.args for r in caplog.records if r.name == "ufp4_compile.passes.rewrite_matmuls"
            and isinstance(r.args, tuple) and len(r.args) == 6]
    rewritten = {module for _, module, _, _, _, detail in rows if not detail.startswith("kept")}
    assert rewritten == {f"model.layers.1.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                         "mlp.down_proj")}
