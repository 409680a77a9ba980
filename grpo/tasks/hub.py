"""Datasets by name from the local Hugging Face cache (task.source=hub): offline, never a download.

    train, held_out = read_cached("openai/gsm8k", "main")   # Tables; held_out None without a test split

Where it looks, in order:
  1. the hub cache: the snapshot that `hf download --repo-type dataset NAME` (or any earlier
     download) left in HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, read
     when called (so a notebook's `os.environ["HF_HOME"] = ...` counts). Its data files are
     read as a local directory by datasets' packaged builders (parquet, json, csv, arrow; the
     README's `configs` choose the files of task.subset), like any local data;
  2. datasets' own cache of an earlier `load_dataset(NAME)` (HF_DATASETS_CACHE).
Both with datasets' and huggingface_hub's offline switches forced on for the load (their
environment variables are read once at import, so the modules' flags are set too), so a name
in neither place is one ValueError naming task.name, not a network attempt.

Splits: `train` trains; `test`, else `validation`, is held out (the first num_eval distinct
questions); without either, num_eval rows of `train` are held out, as for one data file
(at most eval.num_examples: Config.validate lowers num_eval for hub and file tasks).
Columns are task.question_field / answer_field / id_field, as for files.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from grpo.tasks.readers import Table, quiet_datasets, row_where

HELD_OUT_SPLITS = ("test", "validation")


def hub_cache() -> Path:
    """huggingface_hub's cache directory, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


@contextmanager
def offline():
    """datasets and huggingface_hub offline for the duration, whatever the environment said."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE,
             {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")})
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_cached(name: str, subset: str | None) -> tuple[Table, Table | None]:
    """The train split of cached dataset `name` (configuration `subset`) and its held-out split."""
    splits = _load(name, subset)
    where = f"config field `task.name` = {name!r}" + (f" (task.subset = {subset!r})" if subset else "")
    if "train" not in splits:
        raise ValueError(f"{where}: the cached dataset has splits {list(splits)}; grpo trains on a 'train' split")
    held_out = next((s for s in HELD_OUT_SPLITS if s in splits), None)

    def table(split: str) -> Table:
        data = splits[split]
        if len(data) == 0:
            raise ValueError(f"{where}: split {split!r} has no rows")
        return Table(Path(name) / split, data.to_list(), list(data.column_names), row_where)

    return table("train"), (table(held_out) if held_out else None)


def _load(name: str, subset: str | None) -> Any:
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    field = f"config field `task.name` = {name!r}"
    with offline(), quiet_datasets(), tempfile.TemporaryDirectory(prefix="grpo-datasets-") as tmp:
        try:
            snapshot = snapshot_download(name, repo_type="dataset", cache_dir=hub_cache(), local_files_only=True)
        except LocalEntryNotFoundError:
            snapshot = None
        except Exception as e:  # noqa: BLE001 - e.g. a name that is no repo id ("a b/c"): one line
            raise ValueError(f"{field} is not a dataset name in the local Hugging Face cache ({e})") from None
        try:
            if snapshot is not None:  # its files, as a local directory: the Arrow cache is temporary
                return datasets.load_dataset(snapshot, subset, cache_dir=tmp, keep_in_memory=True)
            return datasets.load_dataset(name, subset, keep_in_memory=True)  # datasets' own cache
        except Exception as e:  # noqa: BLE001 - not found, a wrong subset, unreadable files: one line
            offline_only = f"{field} (task.source=hub, offline: nothing is downloaded)"
            if snapshot is None:  # datasets' own words here are "Couldn't reach ... on the Hub"
                raise ValueError(f"{offline_only}: it is in neither the hub cache ({hub_cache()}) nor datasets' "
                                 f"cache; download it first (`hf download --repo-type dataset {name}`)") from None
            detail = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"{offline_only}: its snapshot {snapshot!r} could not be read with task.subset = "
                             f"{subset!r}: {type(e).__name__}: {detail}") from None
