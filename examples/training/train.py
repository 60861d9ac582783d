#!/usr/bin/env python3
"""A tiny character-level language model trained with PyTorch DDP, the way troupe runs it.

torchrun-style: the rank, world size and rendezvous address come from the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Without WORLD_SIZE it runs as one process,
so it can be tried by hand:

    /usr/bin/python3 train.py --steps 50

Checkpoints follow troupe's protocol when TROUPE_CHECKPOINT_DIR is set (see README.md), and
otherwise the plain-script way (--checkpoint-file PATH), which shows that an unmodified script
keeps working under troupe. The run is deterministic: the batch of step s on rank r is a pure
function of (seed, s, r), so a run resumed from a checkpoint at step S ends with exactly the
weights of the run that was never interrupted (compare the `final-weights-sha256` lines).
"""

import argparse
import datetime
import hashlib
import os
import sys
import time
import traceback

# cuBLAS is deterministic only with a fixed workspace; must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CORPUS = "/usr/share/common-licenses/GPL-3"
CONTEXT = 24  # characters the model sees before the one it predicts
EMBED = 16
HIDDEN = 64
LEARNING_RATE = 3e-3


def parse_args(argv):
    p = argparse.ArgumentParser(description="Tiny character-level LM trained with DDP (troupe example).")
    p.add_argument("--steps", type=int, default=200, help="total optimizer steps (default 200)")
    p.add_argument("--batch", type=int, default=16, help="sequences per rank per step (default 16)")
    p.add_argument("--checkpoint-every", type=int, default=20,
                   help="save a checkpoint every K completed steps and at the last one (default 20)")
    p.add_argument("--seed", type=int, default=1, help="seed of the initial weights and of every batch")
    p.add_argument("--sleep-per-step", type=float, default=0.0,
                   help="seconds to sleep after each step (lets tests kill the run mid-way)")
    p.add_argument("--print-every", type=int, default=1, help="print a progress line every N steps (default 1)")
    p.add_argument("--checkpoint-file", default=None,
                   help="without troupe: load this file if present and save it (rank 0) every K steps")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "checkpoint_every", "print_every"):
        if getattr(args, name) < 1 and not (name == "steps" and args.steps == 0):
            p.error("--%s must be positive" % name.replace("_", "-"))
    if args.sleep_per_step < 0:
        p.error("--sleep-per-step must not be negative")
    return args


def load_corpus():
    path = CORPUS
    if not os.path.isfile(path):
        path = os.path.abspath(__file__)
        print("warning: %s is missing; training on %s instead" % (CORPUS, path), file=sys.stderr, flush=True)
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    if data.numel() <= CONTEXT + 1:
        raise RuntimeError("corpus %s is too short (%d characters)" % (path, data.numel()))
    return "".join(vocab), data


class CharMLP(nn.Module):
    """Embedding of CONTEXT characters -> one hidden layer -> logits of the next character."""

    def __init__(self, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, EMBED)
        self.hidden = nn.Linear(CONTEXT * EMBED, HIDDEN)
        self.out = nn.Linear(HIDDEN, vocab_size)

    def forward(self, x):  # x: [batch, CONTEXT] of character ids
        h = self.embed(x).flatten(1)
        return self.out(torch.tanh(self.hidden(h)))


def batch_for(data, seed, step, rank, batch, device):
    """The batch of step `step` (0-based) on rank `rank`: a pure function of (seed, step, rank)."""
    g = torch.Generator()
    g.manual_seed(seed * 1000003 + step * 131 + rank)
    starts = torch.randint(0, data.numel() - CONTEXT - 1, (batch,), generator=g)
    offsets = torch.arange(CONTEXT + 1)
    window = data[starts.unsqueeze(1) + offsets]  # [batch, CONTEXT + 1]
    return window[:, :CONTEXT].to(device), window[:, CONTEXT].to(device)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path):
    """torch.save to a temporary name in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def touch_marker(path):
    with open(path, "wb") as f:
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def touch_progress(path):
    """Touches troupe's progress file; returns the path, or "" (stop trying) after a warning."""
    try:
        with open(path, "a"):
            pass
        os.utime(path)
        return path
    except OSError as e:
        print("warning: cannot touch TROUPE_PROGRESS_FILE %s (%s); progress is the output lines only"
              % (path, e), file=sys.stderr, flush=True)
        return ""


def weights_sha256(model):
    h = hashlib.sha256()
    for _, tensor in model.state_dict().items():
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def make_state(model, optimizer, step, args, vocab, world_size):
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
        "seed": args.seed,
        "batch": args.batch,
        "vocab": vocab,
        "world_size": world_size,
    }


def load_state(path, model, optimizer, vocab, args):
    state = torch.load(path, map_location="cpu")
    if state.get("vocab") != vocab:
        raise RuntimeError("checkpoint %s was trained on another corpus (vocabulary differs)" % path)
    if state.get("seed") != args.seed or state.get("batch") != args.batch:
        print("warning: checkpoint %s was written with --seed %s --batch %s; continuing with --seed %d --batch %d"
              % (path, state.get("seed"), state.get("batch"), args.seed, args.batch), file=sys.stderr, flush=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def env_int(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError("%s=%r is not an integer" % (name, value))


def main(argv):
    args = parse_args(argv)

    distributed = os.environ.get("WORLD_SIZE", "") != ""
    world_size = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local_rank = env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise RuntimeError("RANK=%d is not in [0, WORLD_SIZE=%d)" % (rank, world_size))

    use_cuda = torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "") != ""
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if distributed:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                world_size=world_size, rank=rank, timeout=datetime.timedelta(seconds=60))

    vocab, data = load_corpus()
    model = CharMLP(len(vocab)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    ckpt_dir = os.environ.get("TROUPE_CHECKPOINT_DIR", "")
    resume_dir = os.environ.get("TROUPE_RESUME_DIR", "")
    resume_step = os.environ.get("TROUPE_RESUME_STEP", "")
    progress_file = os.environ.get("TROUPE_PROGRESS_FILE", "")
    checkpoint_file = None if ckpt_dir else args.checkpoint_file

    start = 0
    if resume_dir and resume_step:
        start = env_int("TROUPE_RESUME_STEP", 0)
        path = os.path.join(resume_dir, "rank-%d" % rank, "state.pt")
        if not os.path.isfile(path):
            path = os.path.join(resume_dir, "rank-0", "state.pt")
        saved = load_state(path, model, optimizer, vocab, args)
        if saved != start:
            print("warning: %s holds step %d but TROUPE_RESUME_STEP=%d; continuing from %d"
                  % (path, saved, start, start), file=sys.stderr, flush=True)
        print("resumed from step %d" % start, flush=True)
    elif checkpoint_file and os.path.isfile(checkpoint_file):
        start = load_state(checkpoint_file, model, optimizer, vocab, args)
        print("resumed from step %d" % start, flush=True)

    # Every rank now holds the same weights; DDP also broadcasts rank 0's at construction.
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None) \
        if distributed else model

    step = start
    while step < args.steps:
        x, y = batch_for(data, args.seed, step, rank, args.batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()  # DDP averages the gradients of all ranks here
        optimizer.step()
        step += 1

        if step % args.print_every == 0 or step == args.steps:
            if rank == 0:
                print("step %d loss %.4f" % (step, loss.item()), flush=True)
            else:
                print("step %d" % step, flush=True)
        if progress_file:
            progress_file = touch_progress(progress_file)

        if step % args.checkpoint_every == 0 or step == args.steps:
            if ckpt_dir:
                step_dir = os.path.join(ckpt_dir, "step-%d" % step)
                atomic_save(make_state(model, optimizer, step, args, vocab, world_size),
                            os.path.join(step_dir, "rank-%d" % rank, "state.pt"))
                touch_marker(os.path.join(step_dir, "rank-%d.done" % rank))
            elif checkpoint_file and rank == 0:
                atomic_save(make_state(model, optimizer, step, args, vocab, world_size), checkpoint_file)

        if args.sleep_per_step > 0:
            time.sleep(args.sleep_per_step)

    if rank == 0:
        print("final-weights-sha256 %s" % weights_sha256(model), flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - any failure is the user's error: exit 1, as troupe counts it
        traceback.print_exc(file=sys.stderr)
        print("error: %s" % e, file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    sys.exit(code)
