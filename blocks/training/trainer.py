"""The training loop: AdamW with warm-up and a schedule, masked next-token loss, evaluation,
checkpoints on a geometric schedule, exact resume, Ctrl-C and NaN handling, and DDP under torchrun.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from blocks.config import TransformerConfig
from blocks.files import RunLock, confined
from blocks.interop import is_earlier_layout
from blocks.size import check_fits
from blocks.tasks.base import Task
from blocks.tasks.common import dataset_tensors, target_nll
from blocks.training.checkpoints import (
    CHECKPOINTS,
    checkpoint_files,
    checkpoint_steps,
    load_training_state,
    restore_rng,
    save_checkpoint,
)
from blocks.training.config import TrainConfig
from blocks.training.runs import CONFIG, METRICS, check_out, metrics_lines, read_config, run_config, start_out
from blocks.transformer import Transformer
from blocks.weights import atomic_write_bytes, check_state_dict, remove_temp_files
from scratchnn.devices import pick_device


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    final_loss: float  # NaN when no step ran (see start_step)
    milestone_step: int | None
    start_step: int = 0  # the step the run started (or resumed) at; == step when there was nothing to do


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for update number `step` (0-based): linear warm-up, then the schedule to min_lr_frac * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * shape)


def checkpoint_schedule(cfg: TrainConfig) -> set[int]:
    """Step 0, about n_checkpoints geometrically spaced steps (dense early, sparse late), and the last.

    At least as many checkpoints as steps means every step (and costs no more to compute than that).
    """
    n = cfg.n_checkpoints
    if n > cfg.steps:
        return set(range(cfg.steps + 1))
    steps = {round(cfg.steps ** (i / max(1, n - 1))) for i in range(n)}
    return steps | {0, cfg.steps}


class Trainer:
    """Trains `task` with `model_cfg` under `train_cfg`, writing the run directory `out`.

    Data order depends only on (seed, step), and the learning rate is a function of the step,
    so a resumed run sees exactly the batches and rates the uninterrupted one would.
    """

    def __init__(
        self,
        task: Task,
        model_cfg: TransformerConfig,
        train_cfg: TrainConfig,
        out: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self._t0 = time.perf_counter()  # wall clock of this process's run, for "time to milestone"
        self.task, self.model_cfg, self.cfg, self.out = task, model_cfg, train_cfg, Path(out)
        self.progress = progress
        self.world, self.rank = 1, 0
        self.device = pick_device(train_cfg.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if train_cfg.batch_size % self.world:
            raise ValueError(
                f"batch_size={train_cfg.batch_size} does not split across {self.world} processes; use a multiple of {self.world}"
            )
        self.config = run_config(task, model_cfg, train_cfg)
        check_fits(
            model_cfg,
            batch=train_cfg.batch_size // self.world,
            training=True,
            pos=min(task.seq_len, model_cfg.n_ctx),
            device=self.device,
        )
        # everything that can fail on these options runs before the folder is written, so a refused
        # start leaves nothing behind; a start that fails later (killed before its first checkpoint)
        # holds no checkpoint, and check_out lets the same command start it again
        self.fresh = check_out(self.out, self.config, resume, overwrite) if self.rank == 0 else False
        torch.manual_seed(train_cfg.seed)
        self.model = Transformer(model_cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_cfg.lr,
            betas=(train_cfg.beta1, train_cfg.beta2),
            weight_decay=train_cfg.weight_decay,
        )
        self.tokens, self.mask = dataset_tensors(task.dataset("train"))
        if self.tokens.shape[1] > model_cfg.n_ctx:
            raise ValueError(f"the task's sequences have {self.tokens.shape[1]} tokens but n_ctx is {model_cfg.n_ctx}")
        # one trainer per folder: from here until run() ends, a second process is refused, naming this one
        self._lock = RunLock(self.out) if self.rank == 0 else None
        try:
            if self.rank == 0:
                self.fresh = check_out(self.out, self.config, resume, overwrite)  # again, now that no one else writes
            # an earlier start that saved nothing, replaced (for the CLI to say so)
            self.restarted = self.fresh and not overwrite and (self.out / CONFIG).is_file()
            if self.fresh:
                start_out(self.out, self.config)
            if self.rank == 0:
                for folder in (self.out, self.out / CHECKPOINTS):  # half-written files of a killed save
                    remove_temp_files(confined(folder, self.out))
            self._barrier()
            self.step, self.elapsed, self.milestone_step = 0, 0.0, None
            self.skipped: list[str] = []  # why each newer checkpoint could not be resumed from (for the CLI)
            if resume and checkpoint_steps(self.out):
                self._resume()
                if self.rank == 0 and self.cfg.steps >= self.step and read_config(self.out) != self.config:
                    # a changed harmless setting (a longer run, another eval_every): the run now has these
                    atomic_write_bytes(self.out / CONFIG, json.dumps(self.config, indent=2).encode())
        except BaseException:
            self.release()
            raise
        if self._lock is not None:
            weakref.finalize(self, self._lock.release)  # a trainer that is never run lets go when it is dropped
        self.ddp = self._wrap_ddp()
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def release(self) -> None:
        """Let another trainer write this run folder (run() does this when it ends)."""
        if self._lock is not None:
            self._lock.release()

    # --- set-up -------------------------------------------------------------------------
    def _wrap_ddp(self) -> torch.nn.Module:
        if self.world == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _resume(self) -> None:
        steps = checkpoint_steps(self.out)
        errors = []
        for step in reversed(steps):
            try:
                weights, optim, state = load_training_state(self.out, step)
                source = str(checkpoint_files(self.out, step)[0])
                if is_earlier_layout(weights):
                    raise ValueError(
                        f"{source} was saved by an earlier version of the sandbox, whose weights had another layout; "
                        "it loads for analysis (load_run, the probes, the app), but its optimizer state cannot resume "
                        "training here: start a new run, or finish this one with the version that began it"
                    )
                check_state_dict(self.model, weights, source=source)
                break
            except (ValueError, FileNotFoundError) as err:
                errors.append(f"checkpoint {step}: {err}")
        else:
            raise FileNotFoundError(
                f"no resumable checkpoint in {self.out}" + (": " + "; ".join(errors) if errors else "")
            )
        self.skipped = errors
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optim)
        restore_rng(state["rng"])
        self.step, self.elapsed = state["step"], state.get("elapsed_s", 0.0)
        self.milestone_step = state.get("milestone_step")
        if self.rank == 0:  # drop numbers logged after the checkpoint: the resumed run logs them again
            # a corrupt line is kept as it is (readers skip it and say so): resuming loses nothing
            kept = [line for line, m in metrics_lines(self.out) if m is None or m["step"] <= self.step]
            atomic_write_bytes(self.out / METRICS, "".join(line + "\n" for line in kept).encode())

    # --- data and loss --------------------------------------------------------------------
    def batch_indices(self, step: int) -> Tensor:
        """Rows of the global batch for update `step`: a fresh permutation each epoch, from (seed, epoch)."""
        n, b = self.tokens.shape[0], self.cfg.batch_size
        if b >= n:
            return torch.arange(n)
        per_epoch = n // b
        epoch, j = divmod(step, per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(n, generator=gen), epoch
        return self._perm[j * b : (j + 1) * b]

    def _loss(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(loss to backpropagate on this process, global mean loss) for the global batch `rows`."""
        local = rows.chunk(self.world)[self.rank] if self.world > 1 else rows
        tokens = self.tokens[local].to(self.device, non_blocking=True)
        mask = self.mask[local, :-1].to(self.device, non_blocking=True).float()
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda" and self.cfg.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            # the last token is only ever a target: leaving it out of the input saves 1/seq_len
            # of the work (a quarter for modular addition's "a b = c") and changes no logit
            logits = self.ddp(tokens[:, :-1])
        total = (target_nll(logits, tokens[:, 1:]) * mask).sum()
        count = mask.sum()
        if self.world > 1:  # normalise by the global count, so the mean over processes is the global mean
            stats = torch.stack([total.detach(), count])
            dist.all_reduce(stats)
            global_loss, global_count = stats[0] / stats[1].clamp(min=1), stats[1]
            return total * self.world / global_count.clamp(min=1), global_loss
        loss = total / count.clamp(min=1)
        return loss, loss.detach()

    # --- logging and evaluation -------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        line = (json.dumps(record) + "\n").encode()
        # one O_APPEND write per line: readers see whole lines (read_metrics skips a torn last one)
        fd = os.open(confined(self.out / METRICS, self.out), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def evaluate(self) -> dict[str, Any]:
        self.model.eval()
        try:
            numbers: dict[str, Any] = {f"eval/{k}": v for k, v in self.task.evaluate(self.model).items()}
            scores = self.task.head_scores(self.model)
            if scores is not None:
                numbers["head_scores"] = scores
        finally:
            self.model.train()
        return numbers

    def _save(self) -> None:
        # every process holds the same weights, so all of them stop here together (no hanging barrier)
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            last = max((s for s in checkpoint_steps(self.out) if s <= self.step), default=None)
            self._log({"step": self.step, "stopped": "non-finite weights"})
            raise TrainingDiverged(
                f"the weights became non-finite by step {self.step}; the run stopped without saving them. "
                f"The last good checkpoint is step {last}; try a lower lr or more warm-up"
            )
        if self.rank == 0:
            self._write_checkpoint()
        self._barrier()

    def _write_checkpoint(self) -> None:
        extra = {"elapsed_s": self.elapsed, "milestone_step": self.milestone_step}
        save_checkpoint(self.out, self.step, self.model, self.optimizer, extra)

    def _eval_and_log(self, saved: set[int]) -> None:
        if self.rank == 0:
            numbers = self.evaluate()
            self._log({"step": self.step, **numbers, "elapsed_s": round(self.elapsed, 3)})
            key = self.task.milestone()
            if key and self.milestone_step is None and numbers.get(f"eval/{key}") == 1.0:
                self.milestone_step = self.step
                self._log(
                    {
                        "step": self.step,
                        "milestone": key,
                        "elapsed_s": round(self.elapsed, 3),
                        "wall_s": round(time.perf_counter() - self._t0, 3),
                    }
                )
                if self.step not in saved:
                    self._write_checkpoint()
                    saved.add(self.step)
        self._barrier()

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to `steps`; Ctrl-C saves a checkpoint and returns; a NaN loss raises TrainingDiverged."""
        cfg = self.cfg
        schedule = checkpoint_schedule(cfg)
        saved: set[int] = set()
        self.model.train()
        if self.step == 0:
            self._eval_and_log(saved)
            self._save()
            saved.add(0)
        start_step = self.step
        bar = tqdm(
            total=max(cfg.steps, self.step),
            initial=self.step,
            disable=not self.progress or self.rank != 0,
            desc=self.task.name,
        )
        loss_value, interrupted = float("nan"), False
        try:
            while self.step < cfg.steps:
                started = time.perf_counter()
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, global_loss = self._loss(self.batch_indices(self.step))
                loss_value = float(global_loss)
                if not math.isfinite(loss_value):
                    last = max((s for s in checkpoint_steps(self.out) if s <= self.step), default=None)
                    self._log({"step": self.step + 1, "stopped": "non-finite loss", "train_loss": str(loss_value)})
                    raise TrainingDiverged(
                        f"the loss became {loss_value} at step {self.step + 1} (lr {lr:.3g}); the run stopped. "
                        f"The last good checkpoint is step {last}; try a lower lr or more warm-up"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.step += 1
                self.elapsed += time.perf_counter() - started
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(
                        {"step": self.step, "train_loss": loss_value, "lr": lr, "elapsed_s": round(self.elapsed, 3)}
                    )
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    started = time.perf_counter()
                    self._eval_and_log(saved)
                    self.elapsed += time.perf_counter() - started
                if self.step in schedule and self.step not in saved:
                    self._save()
                    saved.add(self.step)
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            if self.step not in saved:
                self._save()
        finally:
            bar.close()
            self.release()
        return TrainResult(self.out, self.step, interrupted, loss_value, self.milestone_step, start_step)
