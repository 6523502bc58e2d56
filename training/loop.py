"""The training loop: length-grouped batches, AdamW with warmup and linear decay, early stopping."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training import distributed
from training.config import OptimConfig, TrainConfig
from training.distributed import SINGLE, World

log = logging.getLogger(__name__)

Encoded = list[dict[str, list[int]]]
#: per-example losses of a batch: (logits, the batch's train indices) -> losses, shape (batch,)
LossFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise once, truncating to ``max_length``; padding happens per batch."""
    if not texts:
        return []
    out = tokenizer(list(texts), truncation=True, max_length=max_length)
    names = [n for n in tokenizer.model_input_names if n in out]
    return [{n: out[n][i] for n in names} for i in range(len(texts))]


def make_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None, group_by_length: bool
) -> list[list[int]]:
    """Index batches. With grouping, similar lengths share a batch (less padding); the order of
    batches is still shuffled when ``rng`` is given. Without ``rng`` the order is deterministic."""
    order = list(range(len(lengths)))
    if rng is not None:
        rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        grouped: list[int] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            grouped.extend(sorted(chunk, key=lambda i: -lengths[i]))
        order = grouped
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None and group_by_length:
        rng.shuffle(batches)
    return batches


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch (right padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, torch.Tensor] = {}
    for name in examples[0]:
        fill = pad_id if name == "input_ids" else 0
        rows = [e[name] + [fill] * (width - len(e[name])) for e in examples]
        batch[name] = torch.tensor(rows, dtype=torch.long)
    return batch


@dataclass
class TrainResult:
    """What the loop did: the log, the best evaluation, and the throughput."""

    log: list[dict[str, Any]] = field(default_factory=list)
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    steps: int = 0
    stopped_early: bool = False
    examples_seen: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0


def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    """The autocast context of a precision (fp32: none)."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(
    model: nn.Module, optim: OptimConfig, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no decay on biases and norms) and a linear warmup-then-decay schedule."""
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim.learning_rate,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps
    )
    return optimizer, scheduler


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Class probabilities for every example, in input order."""
    was_training = model.training
    model.eval()
    lengths = [len(e["input_ids"]) for e in encoded]
    out = np.zeros((len(encoded), model.classifier.out_features), dtype=np.float32)
    autocast = autocast_for(device, precision)
    for idx in make_batches(lengths, batch_size, None, group_by_length=True):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}
        with autocast():
            logits = model(**batch)
        out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    model.train(was_training)
    return out


def train_loop(
    model: nn.Module,
    train: Encoded,
    train_labels: Sequence[int],
    evaluate: Callable[[], dict[str, float]],
    optim: OptimConfig,
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    precision: str,
    world: World = SINGLE,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave the best evaluated state loaded in it.

    The loss is the cross-entropy with ``train_labels`` unless ``loss_fn`` gives another
    per-example loss (a distilled student's: soft and hard labels).

    With several processes (``world``) every rank draws the same global batches (same seed) and
    trains on its share of each; DDP averages the gradients so that a step equals the step of
    one process on the whole batch. Rank 0 alone evaluates, decides early stopping (broadcast to
    the others) and keeps the best state; the log and figures are global.
    """
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed)
    lengths = [len(e["input_ids"]) for e in train]
    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum_steps)
    total_steps = max(1, math.ceil(optim.epochs * steps_per_epoch))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    optimizer, scheduler = build_optimizer(model, optim, cfg, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(device, precision)
    labels = torch.tensor(train_labels, dtype=torch.long)
    trainable = [p for p in model.parameters() if p.requires_grad]
    net = distributed.wrap(model, world, device)

    result = TrainResult()
    best_score, best_state, bad_evals = -math.inf, None, 0
    running, running_n, micro = 0.0, 0, 0
    start = time.perf_counter()
    progress = tqdm(
        total=total_steps, desc="train", unit="step", dynamic_ncols=True, disable=not world.is_main
    )
    net.train()
    while result.steps < total_steps and not result.stopped_early:
        for global_idx in make_batches(lengths, cfg.batch_size, rng, cfg.group_by_length):
            idx = distributed.shard(global_idx, world)
            # an empty share still joins the gradient all-reduce, with a zero-weighted example
            weight = distributed.loss_scale(len(global_idx), world) if idx else 0.0
            idx = idx or global_idx[:1]
            batch = {k: v.to(device) for k, v in collate([train[i] for i in idx], pad_id).items()}
            micro += 1
            sync = micro % cfg.grad_accum_steps == 0
            with nullcontext() if sync or net is model else net.no_sync():  # type: ignore[operator]
                with autocast():
                    logits = net(**batch)
                if loss_fn is None:
                    losses = nn.functional.cross_entropy(
                        logits.float(), labels[idx].to(device), reduction="none"
                    )
                else:
                    losses = loss_fn(logits.float(), idx)
                # the share's part of the global batch mean (the mean itself in one process)
                loss = losses.sum() * weight
                scaler.scale(loss / cfg.grad_accum_steps).backward()
            if weight:
                running += losses.detach().sum().item()
                running_n += len(idx)
            result.examples_seen += len(global_idx)
            if not sync:
                continue
            if cfg.max_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            progress.update(1)
            step_epoch = round(result.steps / steps_per_epoch, 4)
            if result.steps % cfg.log_every_steps == 0 or result.steps == total_steps:
                loss_sum, loss_n = distributed.sum_over_ranks([running, running_n], world)
                entry = {
                    "step": result.steps,
                    "epoch": step_epoch,
                    "loss": loss_sum / loss_n,
                    "learning_rate": scheduler.get_last_lr()[0],
                }
                result.log.append(entry)
                progress.set_postfix(loss=f"{entry['loss']:.4f}")
                running, running_n = 0.0, 0
            if result.steps % eval_every == 0 or result.steps == total_steps:
                eval_start = time.perf_counter()
                stop = False
                if world.is_main:  # the other ranks wait for the decision in the broadcast
                    metrics = evaluate()
                    result.log.append(
                        {
                            "step": result.steps,
                            "epoch": step_epoch,
                            **{f"eval_{k}": v for k, v in metrics.items()},
                        }
                    )
                    score = metrics[cfg.select_metric]
                    log.info("step %d: dev %s %.4f", result.steps, cfg.select_metric, score)
                    if score > best_score:
                        best_score, bad_evals = score, 0
                        best_state = {
                            n: p.detach().clone()
                            for n, p in model.named_parameters()
                            if p.requires_grad
                        }
                        result.best_metrics, result.best_step = metrics, result.steps
                    else:
                        bad_evals += 1
                        stop = bool(cfg.patience and bad_evals >= cfg.patience)
                        if stop:
                            log.info(
                                "early stop at step %d: no dev improvement in %d evaluations",
                                result.steps,
                                bad_evals,
                            )
                stop = distributed.flag_from_main(stop, world)
                result.eval_seconds += time.perf_counter() - eval_start
                if stop:
                    result.stopped_early = True
                    break
            if result.steps >= total_steps:
                break
    progress.close()
    result.seconds = time.perf_counter() - start
    if best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    model.eval()
    return result
