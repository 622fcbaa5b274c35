"""The files of a Daunce workdir that guard it: ``state.json`` (what the workdir's contents were
computed from), safe names for the stores joined into it, and the temporary workdir's cleanup.

state.json (format version ``STATE_VERSION``) holds content fingerprints of everything that
determines the trained models and their recorded targets::

    {"version": 2, "theta0": <module_digest(θ0)>, "train": <dataset digest>,
     "config": <DaunceConfig.training_fingerprint()>, "num_models": K, "chunk_size": K_c}

``run_id(state)`` hashes all of it but the chunk size (models do not depend on the chunking); each
loss store carries it in its metadata, so a store of another run is never read as this one's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import WorkdirError

STATE_VERSION = 2
STATE_FILE = "state.json"
CALIBRATION_FILE = "calibration.json"  # lr/epochs chosen and why (daunce.calibration); informative
SUMMARY_FILE = "summary.json"  # what the run perturbs (daunce.summary); informative, not part of the fingerprint
STATE_MAX_BYTES = 1 << 20  # a state.json is a few kB; anything larger is not one
FRESH = "overwrite=True (deletes its state.json, adapters/ and losses/) or use a new workdir"
_FIELDS = {"version": int, "theta0": str, "train": str, "config": dict, "num_models": int, "chunk_size": int}


def run_id(state: dict) -> str:
    """Digest of the run a state describes (θ0, training set, config, K, format version)."""
    from ..storage.fingerprint import ContentHash

    return (
        ContentHash("daunce.run")
        .update_json({k: state[k] for k in ("version", "theta0", "train", "config", "num_models")})
        .hexdigest()
    )


def read_state(path: Path) -> dict:
    """The state in ``path``, validated; WorkdirError when it is not a Daunce state file."""

    def bad(why: str) -> WorkdirError:
        return WorkdirError(
            f"Daunce: {path} is not a valid Daunce state file ({why}); remove it, or start afresh "
            f"with Daunce(..., {FRESH}"
        )

    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_MAX_BYTES + 1)
    except OSError as exc:
        raise bad(f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > STATE_MAX_BYTES:
        raise bad(f"larger than {STATE_MAX_BYTES} bytes")
    try:
        state = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise bad("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise bad(f"a JSON {type(state).__name__}, not an object")
    if state.get("version") != STATE_VERSION and isinstance(state.get("version"), int):
        raise WorkdirError(
            f"Daunce: {path} was written by format version {state['version']} of the workdir, this "
            f"code reads version {STATE_VERSION}; start afresh with Daunce(..., {FRESH}"
        )
    for key, typ in _FIELDS.items():
        if not isinstance(state.get(key), typ) or isinstance(state.get(key), bool):
            raise bad(f"field {key!r} missing or not a {typ.__name__}")
    return state


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename), never through
    a link planted at the temporary name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # removes a stale file or link itself, never a link's target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_state(path: Path, state: dict) -> None:
    """Write ``state`` atomically (see :func:`write_json`)."""
    write_json(path, state)


def differences(old: dict, new: dict, *, chunking: bool) -> list[str]:
    """What differs between two states, in words (chunking: include the chunk size)."""
    out = []
    if old["theta0"] != new["theta0"]:
        out.append("θ0 (the model's parameters or buffers)")
    if old["train"] != new["train"] and new["train"] is not None:
        out.append('dataset "train"')
    if old["num_models"] != new["num_models"]:
        out.append(f"num_models (workdir {old['num_models']}, now {new['num_models']})")
    for k in sorted(set(old["config"]) | set(new["config"])):
        if old["config"].get(k) != new["config"].get(k):
            out.append(f"config field {k} (workdir {old['config'].get(k)!r}, now {new['config'].get(k)!r})")
    if chunking and old["chunk_size"] != new["chunk_size"]:
        out.append(
            f"models per chunk (workdir {old['chunk_size']}, now {new['chunk_size']}: set by adapter_chunk, "
            "row_budget and the number of ranks; fit resumes only under the same chunking)"
        )
    return out


def mismatch_error(workdir: Path, diff: list[str]) -> WorkdirError:
    return WorkdirError(
        f"Daunce: workdir {workdir} holds a different run: it differs in {'; '.join(diff)}. "
        f"Start afresh with Daunce(..., {FRESH}"
    )


def wipe(workdir: Path) -> None:
    """Delete what a run put in ``workdir`` (state.json, summary.json, calibration.json, adapters/,
    losses/), nothing else."""
    for name in (STATE_FILE, SUMMARY_FILE, CALIBRATION_FILE):
        (workdir / name).unlink(missing_ok=True)
    for sub in ("adapters", "losses"):
        p = workdir / sub
        if p.is_symlink():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)


def store_files(losses_dir: Path, name: str) -> list[Path]:
    """Every file of the loss store ``name`` (finished, partial, journals, shards, index)."""
    if not losses_dir.is_dir():
        return []
    shard = re.compile(re.escape(name) + r"-\d+-of-\d+\.safetensors")
    return [
        p
        for p in losses_dir.iterdir()
        if p.name.startswith((f"{name}.safetensors", f"{name}.index.json")) or shard.match(p.name)
    ]


_BAD_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_name(name) -> str:
    """``name`` if it is safe to join into the workdir as one file-name component: a non-empty str
    without path separators ('/' or '\\'), control characters (NUL included), a leading '.' (which
    also rules out '.' and '..') or more than 200 characters; else ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"Daunce: a store name must be a str, got {type(name).__name__}")
    if not name or name.startswith(".") or _BAD_CHARS.search(name) or len(name) > 200 or os.path.isabs(name):
        raise ValueError(
            f"Daunce: invalid store name {name!r}: names become files inside the workdir, so they must "
            "be non-empty, at most 200 characters, without '/', '\\', control characters or a leading "
            "'.' (e.g. 'test' or 'val_2')"
        )
    return name


def describe(workdir: Path) -> str:
    """What ``daunce-fast inspect WORKDIR`` prints: the run's K, chunking and training options
    (state.json), the calibration (lr, epochs, what they came from, the first chunk's diagnostics and
    warnings: calibration.json), what is perturbed (summary.json totals) and the loss stores. Every
    name and value from the files is escaped (storage.inspect.escape)."""
    from ..storage.inspect import escape

    state = read_state(workdir / STATE_FILE)
    cfg = state["config"]
    out = [f"Daunce workdir {escape(str(workdir))}"]
    out.append(f"  models: K = {state['num_models']}, chunks of {state['chunk_size']}")
    keys = ("optimizer", "lr", "epochs", "steps", "batch_size", "ratio", "objective", "perturbation", "rho")
    out.append("  options: " + ", ".join(f"{k} {escape(str(cfg.get(k)), 40)}" for k in keys))
    cal = _json_or_none(workdir / CALIBRATION_FILE)
    if cal is None:
        out.append("  calibration: none recorded (no chunk trained yet)")
    else:
        lr, ep = cal.get("lr"), cal.get("epochs")
        out.append(
            f"  calibration: lr {escape(str(lr), 40)} ({escape(str(cal.get('lr_source')), 20)}), "
            f"epochs {escape(str(ep), 40)} ({escape(str(cal.get('epochs_source')), 20)}), "
            f"{escape(str(cal.get('steps')), 20)} steps per copy, θ0's mean training loss "
            f"{escape(str(cal.get('theta0_loss')), 40)}"
        )
        if cal.get("rule"):
            out.append(f"    rule: {escape(str(cal['rule']), 200)}")
        d = cal.get("diagnostics")
        if isinstance(d, dict):
            out.append(
                f"    first chunk: spread across copies {escape(str(d.get('spread')), 40)}, copies' mean "
                f"training target {escape(str(d.get('copies_loss')), 40)}, non-finite {escape(str(d.get('nonfinite')), 20)}"
            )
            for w in d.get("warnings") or []:
                out.append(f"    WARNING: {escape(str(w), 300)}")
    summ = _json_or_none(workdir / SUMMARY_FILE)
    if summ is not None:
        n = len(summ.get("rows") or [])
        out.append(
            f"  perturbed: {n} module(s), {escape(str(summ.get('params_per_copy')), 20)} parameters per copy"
            + (
                f", fallback: {escape(', '.join(map(str, summ['fallback_modules'])), 200)}"
                if summ.get("fallback_modules")
                else ""
            )
        )
    losses = workdir / "losses"
    names = sorted(p.name for p in losses.iterdir()) if losses.is_dir() and not losses.is_symlink() else []
    out.append("  loss stores: " + (", ".join(escape(n, 80) for n in names) if names else "none"))
    return "\n".join(out)


def _json_or_none(path: Path):
    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_MAX_BYTES + 1)
        obj = json.loads(raw.decode("utf-8")) if len(raw) <= STATE_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
