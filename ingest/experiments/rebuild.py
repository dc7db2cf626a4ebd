"""The `kevo ingest` command line that made a store, rebuilt from its manifest.

An experiment's variants are ordinary ingests of the baseline's dataset with the baseline's model and
settings; only what the experiment changes (``--skip-layers``, ``--responses``, the model) differs.
The dataset options come from the manifest's ``dataset`` section (root/path fingerprints, settings);
``dataset_args`` replaces them when the data has moved or the dataset kind is not known here.
"""

from __future__ import annotations

import shlex

from .command import ExperimentError


def dataset_args(meta: dict, store: str) -> list[str]:
    """``[subcommand, --option, value, ...]`` for the store's dataset."""
    ds = meta.get("dataset") or {}
    name, fp, st = ds.get("name"), ds.get("fingerprint") or {}, ds.get("settings") or {}
    try:
        if name == "amber":
            args = ["amber", "--data", fp["root"], "--task", st.get("task", "generative"),
                    "--nouns", st.get("nouns", "offline")]
            if st.get("ids"):
                ids = st["ids"]
                args += ["--ids", ids if isinstance(ids, str) else ",".join(str(i) for i in ids)]
            if st.get("prompt") and st["prompt"] != "AMBER query":
                args += ["--prompt", st["prompt"]]
            if st.get("similarity") and st["similarity"] != "exact":
                args += ["--similarity", st["similarity"]]
            return args
        if name == "coco":
            args = ["coco", "--data", fp["root"]]
            if st.get("prompt"):
                args += ["--prompt", st["prompt"]]
            if st.get("image_ids"):
                args += ["--image-ids", st["image_ids"]]
            return args
        if name == "text":
            return ["text", "--prompts", fp["path"]]
        if name == "folder":
            return ["folder", "--images", fp["root"], "--prompt", st["prompt"]]
        if name == "vqa":
            return ["vqa", "--questions", fp["questions"], "--images", fp["images"]]
    except KeyError as e:
        raise ExperimentError(f"{store}: the manifest's dataset section lacks {e}; give the dataset with "
                              "--dataset-args '...'") from None
    raise ExperimentError(f"{store}: cannot rebuild the ingest options of a {name!r} dataset from its manifest; "
                          "give them with --dataset-args 'SUBCOMMAND --option value ...'")


def settings_args(meta: dict, n_layers: int | None = None, model: str | None = None,
                  device: str | None = None, batch_size: int | None = None) -> list[str]:
    """The shared ingest options of the store (model, dtype, generation, lens, capture), as given."""
    mo, gen, lens, cap, ds = (meta.get(k) or {} for k in ("model", "generation", "lens", "capture", "dataset"))
    args = ["--model", model or mo.get("path") or mo["id"]]
    if mo.get("revision") and not model:
        args += ["--revision", mo["revision"]]
    if mo.get("dtype") and not model:
        args += ["--dtype", mo["dtype"]]
    args += ["--max-new-tokens", str(gen.get("max_new_tokens", 256)),
             "--lens", ",".join(lens.get("modes", ["final_norm"])),
             "--top-k", str(lens.get("top_k", 10)), "--batch-size", str(batch_size or cap.get("batch_size", 1))]
    hidden = cap.get("hidden_layers")
    base_l = mo.get("n_layers")
    if hidden is None or hidden == "all" or (base_l is not None and hidden == list(range(base_l + 1))):
        args += ["--hidden", "all"]
    elif not hidden or hidden == "none":
        args += ["--hidden", "none"]
    else:
        keep = [h for h in hidden if n_layers is None or h <= n_layers]
        args += ["--hidden", ",".join(map(str, keep)) if keep else "none"]
    if cap.get("hidden_dtype"):
        args += ["--hidden-dtype", cap["hidden_dtype"]]
    if lens.get("dola"):
        args.append("--dola")
    if cap.get("capture_prompt"):
        args.append("--capture-prompt")
    if ds.get("limit") is not None:
        args += ["--limit", str(ds["limit"])]
    if gen.get("decoding") == "teacher-forced" and (gen.get("responses") or {}).get("file"):
        args += ["--responses", gen["responses"]["file"]]
    if device:
        args += ["--device", device]
    return args


def split_args(text: str | None) -> list[str] | None:
    return shlex.split(text) if text else None
