"""Loaders: find a dataset's files under its root (official layout), parse them, build task data.

Each loader takes a :class:`LoadContext` and returns a task data object (:mod:`.data`). File lookup is
tolerant: ``root`` may be the folder that holds the dataset folder or the dataset folder itself, and a
shared image folder is looked for in ``root`` and its parents; ``images=DIR`` (and for some sets
``annotations=FILE`` / ``captions=FILE``) override.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, TypeVar

from .base import (MAX_IMAGE_BYTES, DatasetError, DatasetNotFoundError, ParseLog, first_existing, image_refs,
                   iter_lines, unsafe_image_id)
from .data import CaptionData, ClassificationData, MatchingData, RetrievalData, TextToImageData
from .formats import aic, captions, cclip, elevater, r2d2
from .imagesource import FolderImages, MultiFolderImages, TsvImages
from .templates import get_templates

if TYPE_CHECKING:  # pragma: no cover
    from .registry import DatasetSpec


@dataclass
class LoadContext:
    spec: "DatasetSpec"
    root: Path
    split: str
    params: Dict[str, Any] = field(default_factory=dict)
    log: ParseLog = field(default_factory=ParseLog)

    def missing(self, what: str, tried: Iterable[Path]) -> DatasetNotFoundError:
        tried_s = "\n".join(f"  {p}" for p in tried)
        return DatasetNotFoundError(
            f"{self.spec.name} (split {self.split!r}): {what} not found under {self.root}\n"
            f"tried:\n{tried_s}\nexpected layout:\n{self.spec.render_layout(self.split)}\n"
            f"(see `ccmb datasets list` and docs/datasets.md)")

    def file(self, what: str, names: List[str], dirs: Optional[List[Path]] = None,
             param: Optional[str] = None) -> Path:
        if param and self.params.get(param):
            p = Path(self.params[param])
            if not p.is_file():
                raise self.missing(what, [p])
            return p
        tried = [d / n for d in (dirs or [self.root]) for n in names]
        found = first_existing(tried, kind="file")
        if found is None:
            raise self.missing(what, tried)
        return found

    def folder(self, what: str, names: List[str], up: int = 2) -> Path:
        if self.params.get("images"):
            p = Path(self.params["images"])
            if not p.is_dir():
                raise self.missing(what, [p])
            return p
        bases = [self.root] + list(self.root.resolve().parents)[:up]
        tried = [b / n for b in bases for n in names]
        found = first_existing(tried, kind="dir")
        if found is None:
            raise self.missing(what, tried)
        return found

    def images(self, folder: Path, cls: type = FolderImages, **kw: Any) -> FolderImages:
        """The image folder as an image source with the read bounds of the parameters: ``image_root=DIR``
        (images may be links into DIR) and ``max_image_bytes=N`` (default :data:`MAX_IMAGE_BYTES`)."""
        roots = [self.params["image_root"]] if self.params.get("image_root") else []
        try:
            max_bytes = int(self.params.get("max_image_bytes") or MAX_IMAGE_BYTES)
        except ValueError:
            raise DatasetError(f"-p max_image_bytes={self.params['max_image_bytes']!r}: expected a number of "
                               "bytes") from None
        return cls(folder, roots=roots, max_bytes=max_bytes, **kw)

    def kw(self, **files: Path) -> Dict[str, Any]:
        return {"log": self.log, "files": {k: str(v) for k, v in files.items()}}


def _check_root(ctx: LoadContext) -> None:
    if not ctx.root.is_dir():
        raise ctx.missing("data root", [ctx.root])


Row = TypeVar("Row")


def _inside_image_folder(ctx: LoadContext, ann: Path, rows: List[Row], image: Callable[[Row], str],
                         line: Callable[[Row], Optional[int]]) -> List[Row]:
    """The rows whose image id stays inside the image folder; an absolute id or one with ``..`` is a
    malformed line (strict: the error names ``file:line``; lenient: skipped and counted)."""
    out = []
    for r in rows:
        reason = unsafe_image_id(image(r))
        if reason is not None:
            ctx.log.bad(ann, line(r), f"image {image(r)!r}: {reason}")
            continue
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------- R2D2

R2D2_IMAGES = "IQR_IQM_ICR_ICM_images"


def load_r2d2(ctx: LoadContext):
    """ICM/IQM (matching) and ICR/IQR (retrieval) from the official R2D2 JSON lines."""
    _check_root(ctx)
    spec, split = ctx.spec, ctx.split
    name = spec.options["file"].format(split=split)
    folder = spec.options["folder"]
    ann = ctx.file("annotation file", [f"{folder}/{split}/{name}", f"{split}/{name}", name],
                   param="annotations")
    img_dir = ctx.folder("image folder", [R2D2_IMAGES])
    images = ctx.images(img_dir, default_ext="")
    matching = spec.task == "matching"
    rows = r2d2.parse_r2d2_jsonl(ann, ctx.log, with_label=matching)
    rows = _inside_image_folder(ctx, ann, rows, lambda r: r.image, lambda r: r.line)
    refs = image_refs(ann, ((r.image, r.line) for r in rows))
    if matching:
        image_ids, pair_images, pair_texts, labels = r2d2.matching_pairs(rows, ann, ctx.log)
        return MatchingData(spec.name, split, image_ids, images, pair_images, pair_texts, labels,
                            image_refs=refs, **ctx.kw(annotations=ann, images=img_dir))
    image_ids, texts, t2i = r2d2.retrieval_ground_truth(rows, ann, ctx.log)
    return RetrievalData(spec.name, split, image_ids, images, texts, t2i, directions=spec.directions,
                         image_refs=refs, **ctx.kw(annotations=ann, images=img_dir))


# --------------------------------------------------------------------------------- caption lines

FLICKR_IMAGES = ["Flickr30k-images", "flickr30k-images", "flickr30k_images"]


def load_flickr30k_cna(ctx: LoadContext) -> RetrievalData:
    """Flickr30k-CNA: ``flickr30k_cna_{split}.txt`` (or ``flickr30k_cn_{split}.txt``) + Flickr30k images."""
    _check_root(ctx)
    split = ctx.split
    names = [f"flickr30k_cna_{split}.txt", f"flickr30k_cn_{split}.txt"]
    dirs = [ctx.root / "Flickr30k-CNA" / split, ctx.root / split, ctx.root / "Flickr30k-CNA", ctx.root]
    ann = ctx.file("caption file", names, dirs, param="annotations")
    return _caption_retrieval(ctx, ann, clean=False)


def _caption_retrieval(ctx: LoadContext, ann: Path, clean: bool) -> RetrievalData:
    img_dir = ctx.folder("image folder", FLICKR_IMAGES)
    rows = captions.parse_caption_lines(ann, ctx.log, clean=clean)
    rows = _inside_image_folder(ctx, ann, rows, lambda r: r.image, lambda r: r.line)
    image_ids, texts, text_ids, t2i = captions.caption_ground_truth(rows)
    return RetrievalData(ctx.spec.name, ctx.split, image_ids, ctx.images(img_dir), texts, t2i,
                         directions=ctx.spec.directions, text_ids=text_ids,
                         image_refs=image_refs(ann, ((r.image, r.line) for r in rows)),
                         **ctx.kw(annotations=ann, images=img_dir))


# ------------------------------------------------------------------------------------ Chinese-CLIP

CCLIP_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "dev": "valid"}


def _cclip_files(ctx: LoadContext, dataset_dirs: List[str]):
    split = CCLIP_SPLIT_ALIASES.get(ctx.split, ctx.split)
    dirs = [ctx.root] + [ctx.root / d for d in dataset_dirs]
    texts = ctx.file("texts file", [f"{split}_texts.jsonl"], dirs, param="texts")
    tsv = ctx.file("image TSV", [f"{split}_imgs.tsv"], [texts.parent] + dirs, param="images_tsv")
    return texts, tsv


def load_cclip_retrieval(ctx: LoadContext) -> RetrievalData:
    """MUGE / Flickr30k-CN / COCO-CN in the Chinese-CLIP layout (Flickr30k-CN also from raw captions)."""
    _check_root(ctx)
    spec = ctx.spec
    try:
        texts_path, tsv = _cclip_files(ctx, spec.options.get("dirs", []))
    except DatasetNotFoundError:
        if spec.options.get("raw_captions"):
            raw = _raw_flickr_cn(ctx)
            if raw is not None:
                return _caption_retrieval(ctx, raw, clean=True)
        raise
    rows = cclip.parse_texts_jsonl(texts_path, ctx.log)
    images = TsvImages(tsv, rebuild_index=bool(ctx.params.get("rebuild_index")))
    images.report(ctx.log)
    image_ids, texts, text_ids, t2i = cclip.text_ground_truth(rows, images.ids)
    return RetrievalData(spec.name, ctx.split, image_ids, images, texts, t2i, directions=spec.directions,
                         text_ids=text_ids, image_refs=image_refs(texts_path, ((i, r.line) for r in rows
                                                                               for i in r.image_ids)),
                         **ctx.kw(texts=texts_path, images=tsv))


def _raw_flickr_cn(ctx: LoadContext) -> Optional[Path]:
    if ctx.params.get("captions"):
        p = Path(ctx.params["captions"])
        if not p.is_file():
            raise ctx.missing("caption file", [p])
        return p
    split = {"valid": "val", "validation": "val"}.get(ctx.split, ctx.split)
    dirs = [ctx.root, ctx.root / "flickr30k-cn", ctx.root / "Flickr30k-CN"]
    names = [f"flickr30k-cn_{split}.txt", f"flickr30k_cn_{split}.txt", f"{split}.txt"]
    return first_existing([d / n for d in dirs for n in names], kind="file")


def load_cclip_text_to_image(ctx: LoadContext) -> TextToImageData:
    """Prompts of ``{split}_texts.jsonl`` with the first of their ``image_ids`` as reference image."""
    _check_root(ctx)
    texts_path, tsv = _cclip_files(ctx, ctx.spec.options.get("dirs", []))
    rows = cclip.parse_texts_jsonl(texts_path, ctx.log)
    images = TsvImages(tsv, rebuild_index=bool(ctx.params.get("rebuild_index")))
    images.report(ctx.log)
    order: Dict[str, int] = {}
    prompts, prompt_ids, refs = [], [], []
    for r in rows:
        if not r.image_ids:
            ctx.log.bad(texts_path, r.line, f"prompt {r.text_id} has no reference image")
            continue
        refs.append(order.setdefault(r.image_ids[0], len(order)))
        prompts.append(r.text)
        prompt_ids.append(r.text_id)
    return TextToImageData(ctx.spec.name, ctx.split, list(order), images, prompts, prompt_ids, refs,
                           image_refs=image_refs(texts_path, ((r.image_ids[0], r.line) for r in rows if r.image_ids)),
                           **ctx.kw(texts=texts_path, images=tsv))


# ------------------------------------------------------------------------------------------ AIC-ICC

AIC_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


def _aic_items(ctx: LoadContext):
    _check_root(ctx)
    split = AIC_SPLIT_ALIASES.get(ctx.split, ctx.split)
    dirs = [ctx.root] + sorted(p for p in ctx.root.glob(f"ai_challenger_caption_{split}_*") if p.is_dir())
    if ctx.params.get("annotations"):
        ann = ctx.file("annotation file", [], param="annotations")
    else:
        candidates = [p for d in dirs for p in sorted(d.glob(f"caption_{split}_annotations_*.json"))]
        candidates += [d / f"{split}.json" for d in dirs]
        ann = first_existing(candidates, kind="file")
        if ann is None:
            raise ctx.missing("annotation file", candidates or [ctx.root / f"caption_{split}_annotations_*.json"])
    if ctx.params.get("images"):
        img_dir = ctx.folder("image folder", [])
    else:
        cands = [p for d in [ann.parent, *dirs] for p in sorted(d.glob(f"caption_{split}_images_*"))]
        cands += [ann.parent / "images", ann.parent / f"{split}_images"]
        found = first_existing(cands, kind="dir")
        if found is None:
            raise ctx.missing("image folder", cands)
        img_dir = found
    items = aic.parse_aic_json(ann, ctx.log)
    kept = []
    for it in items:
        reason = unsafe_image_id(it.image_id)
        if reason is not None:
            ctx.log.bad(ann, None, f"item {it.index}: image_id {it.image_id!r}: {reason}")
            continue
        kept.append(it)
    items = kept
    n = ctx.params.get("num_images")
    if n not in (None, "", 0, "0", "all"):
        items = items[: int(n)]
    return ann, img_dir, items


def load_aic_retrieval(ctx: LoadContext) -> RetrievalData:
    """AIC-ICC as retrieval: the first ``num_images`` images (default all) and their captions."""
    ann, img_dir, items = _aic_items(ctx)
    texts, t2i = [], []
    text_ids = []
    for i, item in enumerate(items):
        for k, c in enumerate(item.captions):
            texts.append(c)
            text_ids.append(f"{item.image_id}#{k}")
            t2i.append([i])
    return RetrievalData(ctx.spec.name, ctx.split, [it.image_id for it in items], ctx.images(img_dir),
                         texts, t2i, directions=ctx.spec.directions, text_ids=text_ids,
                         image_refs=_aic_refs(ann, items), **ctx.kw(annotations=ann, images=img_dir))


def load_aic_caption(ctx: LoadContext) -> CaptionData:
    """AIC-ICC as captioning: every image with its reference captions."""
    ann, img_dir, items = _aic_items(ctx)
    return CaptionData(ctx.spec.name, ctx.split, [it.image_id for it in items], ctx.images(img_dir),
                       [it.captions for it in items], image_refs=_aic_refs(ann, items),
                       **ctx.kw(annotations=ann, images=img_dir))


def _aic_refs(ann: Path, items) -> Dict[str, str]:
    return {it.image_id: f"{ann}: item {it.index}" for it in items}


# ----------------------------------------------------------------------------------------- ELEVATER

def load_elevater(ctx: LoadContext) -> ClassificationData:
    """ELEVATER-CN / ImageNet-CN: ``label_cn.txt`` + ``{split}/<class index>/<image>``."""
    _check_root(ctx)
    sub = ctx.spec.options.get("subdir", "")
    dirs = [ctx.root] + ([ctx.root / sub] if sub else [])
    labels_file = ctx.file("label_cn.txt", ["label_cn.txt"], dirs)
    base = labels_file.parent
    split_dir = base / ctx.split
    if not split_dir.is_dir():
        alt = {"test": "val", "val": "test"}.get(ctx.split)
        if alt and (base / alt).is_dir():
            split_dir = base / alt
        else:
            raise ctx.missing(f"split folder {ctx.split!r}", [split_dir])
    classnames = elevater.read_classnames(labels_file, ctx.log)
    image_ids, labels = elevater.scan_class_folders(split_dir, len(classnames), ctx.log)
    tfile = base / "templates_cn.txt"
    if ctx.params.get("templates"):
        templates = [t for t in str(ctx.params["templates"]).split("|") if t]
    elif tfile.is_file():
        templates = [line.strip() for _, line in iter_lines(tfile, ctx.log)]
    else:
        templates = get_templates(ctx.spec.options.get("templates", ctx.spec.name))
    return ClassificationData(ctx.spec.name, split_dir.name, image_ids, ctx.images(base, MultiFolderImages), labels,
                              classnames, templates, **ctx.kw(labels=labels_file, images=split_dir))
