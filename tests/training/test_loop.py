import dataclasses

import numpy as np
import pytest
import torch

from ufp4_compile.data.corpus import Corpus, TokenStream
from ufp4_compile.models.gpt import GPTConfig
from ufp4_compile.recipes import get_recipe
from ufp4_compile.training import compile as compile_step
from ufp4_compile.training.checkpoint import ResumeError
from ufp4_compile.training.loop import Run, RunSpec, TrainConfig
from ufp4_compile.training.parallel import Ranks

MODEL = GPTConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, seq_len=32)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    text = (rng.integers(0, 64, 20_000) // 3 * 3).astype(np.uint8)  # some structure to learn
    return Corpus(TokenStream([text[:18_000]]), TokenStream([text[18_000:]]), 64, {"sha256": "synthetic"})


def config(**overrides) -> TrainConfig:
    base = TrainConfig(steps=12, batch_size=4, lr=1e-2, warmup_steps=2, backend="eager", eval_batches=2,
                       log_every=4, progress=False)
    return dataclasses.replace(base, **overrides)


def final_params(run: Run) -> dict:
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def check_resume_reproduces(recipe: str, corpus, tmp_path, **overrides):
    spec = RunSpec(get_recipe(recipe), seed=3)
    full_run = Run(spec, MODEL, corpus, config(**overrides))
    full = full_run.execute()
    ckpt = tmp_path / "run.pt"
    first = Run(spec, MODEL, corpus, config(stop_at=5, **overrides), ckpt).execute()
    assert first["interrupted"] and first["steps_done"] == 5 and ckpt.exists()
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed_run = Run(spec, MODEL, corpus, config(**overrides), ckpt)
    resumed_run.resume()
    resumed = resumed_run.execute()
    assert resumed["complete"] and resumed["steps_done"] == resumed_run.cfg.steps
    assert resumed["losses"] == full["losses"]  # bit for bit
    assert resumed["val_loss"] == full["val_loss"]
    for name, value in final_params(full_run).items():
        torch.testing.assert_close(final_params(resumed_run)[name], value, rtol=0, atol=0)


def test_data_parallel_settings_are_checked():
    with pytest.raises(ValueError, match="parallel='mpi' is not valid; valid values: none, ddp, fsdp2"):
        config(parallel="mpi")
    for name in ("checkpoint_every", "stop_at", "diagnose_every"):  # not supported with data parallelism
        with pytest.raises(ValueError, match=f"{name}=2 is not supported with parallel='ddp'"):
            config(parallel="ddp", **{name: 2})
    with pytest.raises(RuntimeError, match="parallel='fsdp2' needs an initialized process group"):
        Ranks.of("fsdp2")
    with pytest.raises(ValueError, match="batch_size=3 is not valid with 2 ranks"):
        Ranks("ddp", 0, 2).rows(torch.zeros(3, 4))
    assert Ranks("ddp", 1, 2).rows(torch.arange(8).view(4, 2)).tolist() == [[4, 5], [6, 7]]  # rank 1: rows 2, 3


def test_training_lowers_the_loss(corpus):
    result = Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config(steps=30)).execute()
    assert result["complete"] and len(result["losses"]) == 30
    assert np.mean(result["losses"][-5:]) < 0.8 * result["losses"][0]
    assert result["val_loss"] is not None and result["tokens_per_s"] > 0
    assert result["peak_memory"]["kind"] == "cpu_process_peak_rss"


def test_resume_reproduces_the_uninterrupted_curve(corpus, tmp_path):
    check_resume_reproduces("bf16", corpus, tmp_path)


@pytest.fixture
def one_thread():
    # Inductor's CPU embedding backward accumulates with atomic adds across threads, so compiled runs are
    # bit-reproducible on the CPU only with one thread (eager runs are with any number).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not compile_step.ufp4_backend_available(), reason="the ufp4 backend is not installed")
def test_resume_reproduces_with_the_ufp4_backend(corpus, tmp_path, one_thread):
    # Stochastic rounding draws its seeds from torch's generator: the checkpoint's RNG state matters here.
    check_resume_reproduces("ufp4", corpus, tmp_path, backend="ufp4", steps=8, log_every=2)


def test_same_seed_same_start_and_batches(corpus):
    a = Run(RunSpec(get_recipe("bf16"), 7), MODEL, corpus, config())
    b = Run(RunSpec(get_recipe("ufp4"), 7), MODEL, corpus, config())
    c = Run(RunSpec(get_recipe("bf16"), 8), MODEL, corpus, config())
    for name, value in final_params(a).items():
        torch.testing.assert_close(final_params(b)[name], value, rtol=0, atol=0)
    assert not torch.equal(a.model.embed.weight, c.model.embed.weight)
    torch.testing.assert_close(a.batch(4)[0], c.batch(4)[0])  # batches come from data_seed, not the seed


def test_evaluation_does_not_change_the_curve(corpus):
    spec = RunSpec(get_recipe("bf16"), 1)
    plain = Run(spec, MODEL, corpus, config()).execute()
    evaluated = Run(spec, MODEL, corpus, config(eval_every=3)).execute()
    assert evaluated["losses"] == plain["losses"]
    assert [v["step"] for v in evaluated["val_history"]] == [3, 6, 9, 12]
    assert evaluated["val_loss"] == plain["val_loss"]


def test_checkpoint_of_another_run_is_refused(corpus, tmp_path):
    ckpt = tmp_path / "run.pt"
    Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config(stop_at=3), ckpt).execute()
    other = Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config(lr=5e-3), ckpt)
    with pytest.raises(ResumeError, match="fields differ: lr"):
        other.resume()


def test_lr_schedule():
    cfg = config(steps=101, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0) and cfg.lr_at(100) == pytest.approx(0.1)
    assert cfg.lr_at(55) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="batch_size"):
        config(batch_size=0)


def test_eager_backend_runs_a_4bit_recipe_through_the_emulation(corpus):
    spec = RunSpec(get_recipe("ufp4"), 0)
    quantized = Run(spec, MODEL, corpus, config(steps=4)).execute()
    plain = Run(RunSpec(get_recipe("bf16"), 0), MODEL, corpus, config(steps=4)).execute()
    assert quantized["complete"] and quantized["losses"][0] != plain["losses"][0]


def test_backend_checks():
    with pytest.raises(ValueError, match="valid values: ufp4, inductor, eager"):
        compile_step.check_backend("tvm", get_recipe("bf16"))
    with pytest.raises(ValueError, match="cannot run recipe 'nvfp4'"):
        compile_step.check_backend("inductor", get_recipe("nvfp4"))
    compile_step.check_backend("inductor", get_recipe("bf16"))
