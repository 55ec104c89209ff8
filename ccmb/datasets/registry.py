"""The registry of downstream datasets: name -> task, format, default split, expected layout, loader.

``load_dataset(name, root, split=None, **params)`` is the one entry point (API of the CLI
``ccmb datasets`` and of the benchmark harness). ``elevater-cn/<name>`` is resolved for any ``<name>``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..suggest import and_list, did_you_mean, unknown
from .base import ParseLog, PathLike, UnknownDatasetError, UnknownSplitError, gc_paused
from . import loaders

logger = logging.getLogger(__name__)

BOTH = ("i2t", "t2i")


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about one dataset (``layout`` uses ``{split}`` placeholders)."""

    name: str
    task: str
    format: str
    default_split: str
    splits: Tuple[str, ...]
    layout: str
    loader: Callable[[loaders.LoadContext], Any] = field(repr=False, compare=False)
    description: str = ""
    source: str = ""
    directions: Tuple[str, ...] = BOTH
    params: Dict[str, str] = field(default_factory=dict)  # documented parameters
    options: Dict[str, Any] = field(default_factory=dict, repr=False)  # loader internals
    # the evaluation this dataset's published numbers come from (ccmb_bench.protocols describes each)
    protocol: str = "ccmb"
    protocol_version: str = ""
    top_k: Optional[int] = None  # R2D2 two-stage retrieval: candidates re-ranked per query (None: the model's)
    split_aliases: Dict[str, str] = field(default_factory=dict)  # other names the loader accepts (val -> valid)

    def check_split(self, split: Optional[str], params: Optional[Dict[str, Any]] = None) -> str:
        """``split`` (default: the paper's) when this dataset has it (or an alias of one); otherwise
        :class:`UnknownSplitError` naming the splits it has. An explicit annotation file (``-p annotations=``,
        ``texts=``, ``captions=``) makes the split a free label."""
        split = split or self.default_split
        if split in self.splits or split in self.split_aliases or FILE_PARAMS & set(params or {}):
            return split
        has = and_list(list(self.splits))
        note = f" (the published evaluation uses {self.default_split})" if len(self.splits) > 1 else ""
        raise UnknownSplitError(f"{self.name} has {has}{note}, no split {split!r}"
                                f"{did_you_mean(split, self.splits)}")

    def render_layout(self, split: Optional[str] = None) -> str:
        return self.layout.replace("{split}", split or self.default_split)

    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name, "task": self.task, "format": self.format,
               "default_split": self.default_split, "splits": list(self.splits),
               "layout": self.render_layout(), "description": self.description, "source": self.source,
               "params": dict(self.params), "protocol": self.protocol,
               "protocol_version": self.protocol_version}
        if self.top_k is not None:
            out["top_k"] = self.top_k
        if self.task == "retrieval":
            out["directions"] = list(self.directions)
        return out


#: dataset parameters that name the annotation file directly (the split is then only a label)
FILE_PARAMS = frozenset({"annotations", "texts", "captions"})


def _r2d2_layout(folder: str, file: str) -> str:
    return (f"<root>/IQR_IQM_ICR_ICM_images/<name>.jpg     (one flat folder shared by ICM/IQM/ICR/IQR)\n"
            f"<root>/{folder}/{{split}}/{file}   JSON lines "
            + ('{"text", "image_path", "label": 0|1}' if "itm" in file else '{"text", "image_path"}'))


# reference evaluations (name, version) named by the entries below; ccmb_bench.protocols holds their rules
R2D2_EVAL = ("r2d2", "yuxie11/R2D2@6c9f74a")
CCLIP_EVAL = ("chinese-clip", "OFA-Sys/Chinese-CLIP@2c586c5")
CLIP_BENCHMARK_EVAL = ("clip-benchmark", "LAION-AI/CLIP_benchmark")

_R2D2_SOURCE = "https://github.com/yuxie11/R2D2 (CCMB downloads: https://zero.so.com)"
_CCLIP_SOURCE = "https://github.com/OFA-Sys/Chinese-CLIP#数据集格式预处理 (preprocessed MUGE/Flickr30k-CN/COCO-CN)"
_CCLIP_LAYOUT = ("<root>/{split}_imgs.tsv       lines '<image_id>\\t<base64 image>'\n"
                 "<root>/{split}_texts.jsonl    lines {\"text_id\", \"text\", \"image_ids\": [...]}")
_AIC_LAYOUT = ("<root>/ai_challenger_caption_{split}_*/caption_{split}_annotations_*.json   JSON array of\n"
               "      {\"url\", \"image_id\": \"<name>.jpg\", \"caption\": [5 captions]}\n"
               "<root>/ai_challenger_caption_{split}_*/caption_{split}_images_*/<name>.jpg\n"
               "(or <root>/{split}.json + <root>/images/)")
_ELEVATER_LAYOUT = ("<root>/label_cn.txt                 Chinese class name per line (line i = class i)\n"
                    "<root>/{split}/<class index>/<image>  class folders 0..9 or zero-padded 000..\n"
                    "<root>/templates_cn.txt             optional prompt templates ('{}' = class name)")


def _builtin() -> List[DatasetSpec]:
    specs = []
    for name, folder, file, task in [
        ("icm", "ICM", "long_itm_{split}.json", "matching"),
        ("iqm", "IQM", "short_itm_{split}.json", "matching"),
        ("icr", "ICR", "long_itr_{split}.json", "retrieval"),
        ("iqr", "IQR", "short_itr_{split}.json", "retrieval"),
    ]:
        kind = "image-caption" if folder.startswith("IC") else "image-query"
        specs.append(DatasetSpec(
            name=name, task=task, format="r2d2-jsonl", default_split="val", splits=("train", "val"),
            layout=_r2d2_layout(folder, file), loader=loaders.load_r2d2, source=_R2D2_SOURCE,
            description=f"CCMB {kind} {task} ({'ROC-AUC' if task == 'matching' else 'R@1/5/10, MR'}); "
                        "only train/val are public, the official code evaluates on val",
            params={"images": "image folder (default: IQR_IQM_ICR_ICM_images in root or its parents)",
                    "annotations": "annotation file (overrides the layout)"},
            options={"folder": folder, "file": file}, protocol=R2D2_EVAL[0], protocol_version=R2D2_EVAL[1],
            top_k=64 if task == "retrieval" else None))
    specs.append(DatasetSpec(
        name="flickr30k-cna", task="retrieval", format="caption-lines", default_split="test",
        splits=("train", "val", "test"), loader=loaders.load_flickr30k_cna, source=_R2D2_SOURCE,
        layout=("<root>/Flickr30k-images/<flickr_id>.jpg\n"
                "<root>/Flickr30k-CNA/{split}/flickr30k_cna_{split}.txt   lines '<flickr_id>#<k>\\t<caption>'\n"
                "      (also accepted: flickr30k_cn_{split}.txt, or the file directly in <root>)"),
        description="Flickr30k with professional Chinese translations (CCMB); test = 1,000 images x 5",
        params={"images": "Flickr30k image folder", "annotations": "caption file"},
        protocol=R2D2_EVAL[0], protocol_version=R2D2_EVAL[1], top_k=128))
    specs.append(DatasetSpec(
        name="flickr30k-cn", task="retrieval", format="cclip-tsv", default_split="test",
        splits=("train", "valid", "test"), loader=loaders.load_cclip_retrieval, source=_CCLIP_SOURCE,
        layout=_CCLIP_LAYOUT + "\n(or <root>/Flickr30k-CN/...; raw files <root>/flickr30k-cn_{split}.txt lines "
                               "'<id>.jpg#<k>\\t<caption>' + <root>/Flickr30k-images/, tags stripped)",
        description="Flickr30k-CN (machine-translated train/val, human test); test = 1,000 images x 5",
        params={"captions": "raw '<id>.jpg#k\\t<caption>' file (POS tags/segmentation stripped)",
                "images": "image folder for raw captions", "rebuild_index": "1 to rebuild the TSV index"},
        options={"dirs": ["Flickr30k-CN", "flickr30k-cn"], "raw_captions": True},
        protocol=CCLIP_EVAL[0], protocol_version=CCLIP_EVAL[1], split_aliases=dict(loaders.CCLIP_SPLIT_ALIASES)))
    specs.append(DatasetSpec(
        name="coco-cn", task="retrieval", format="cclip-tsv", default_split="test",
        splits=("train", "valid", "test"), loader=loaders.load_cclip_retrieval, source=_CCLIP_SOURCE,
        layout=_CCLIP_LAYOUT + "\n(or <root>/COCO-CN/...)",
        description="COCO-CN; test = 1,000 images, 1,053 texts",
        params={"rebuild_index": "1 to rebuild the TSV index"},
        options={"dirs": ["COCO-CN", "coco-cn"]},
        protocol=CCLIP_EVAL[0], protocol_version=CCLIP_EVAL[1], split_aliases=dict(loaders.CCLIP_SPLIT_ALIASES)))
    specs.append(DatasetSpec(
        name="muge", task="retrieval", format="cclip-tsv", default_split="valid",
        splits=("train", "valid", "test"), loader=loaders.load_cclip_retrieval, source=_CCLIP_SOURCE,
        directions=("t2i",),
        layout=_CCLIP_LAYOUT + "\n(or <root>/MUGE/...; original keys query_id/query_text/item_ids accepted)",
        description="MUGE e-commerce text-to-image retrieval; test labels are hidden, evaluate on valid",
        params={"rebuild_index": "1 to rebuild the TSV index"},
        options={"dirs": ["MUGE", "muge"]},
        protocol=CCLIP_EVAL[0], protocol_version=CCLIP_EVAL[1], split_aliases=dict(loaders.CCLIP_SPLIT_ALIASES)))
    specs.append(DatasetSpec(
        name="aic-icc", task="retrieval", format="aic-icc-json", default_split="validation",
        splits=("train", "validation"), loader=loaders.load_aic_retrieval,
        source="AI Challenger 2017 image Chinese captioning (mirrors; https://github.com/AIChallenger)",
        layout=_AIC_LAYOUT,
        description="AIC-ICC captions as retrieval; the paper's image subset is unpublished: num_images=N "
                    "takes the first N images of the split (default all)",
        params={"num_images": "first N images of the split (default: all)", "images": "image folder",
                "annotations": "annotation JSON"}, split_aliases=dict(loaders.AIC_SPLIT_ALIASES)))
    specs.append(DatasetSpec(
        name="aic-icc-caption", task="captioning", format="aic-icc-json", default_split="validation",
        splits=("train", "validation"), loader=loaders.load_aic_caption,
        source="AI Challenger 2017 image Chinese captioning", layout=_AIC_LAYOUT,
        description="AIC-ICC image captioning (5 reference captions per image)",
        params={"num_images": "first N images of the split (default: all)", "images": "image folder",
                "annotations": "annotation JSON"}, split_aliases=dict(loaders.AIC_SPLIT_ALIASES)))
    specs.append(DatasetSpec(
        name="imagenet-cn", task="classification", format="elevater", default_split="test",
        splits=("test",), loader=loaders.load_elevater,
        source="ImageNet val in the ELEVATER layout with Chinese names (Chinese-CLIP zero-shot data)",
        layout=_ELEVATER_LAYOUT + "\n(or <root>/imagenet-cn/...; a 'val' folder is accepted for 'test')",
        description="ImageNet-1k val, 1,000 Chinese class names; top-1/top-5/mean per-class recall",
        params={"templates": "'|'-separated templates overriding the defaults"},
        options={"subdir": "imagenet-cn", "templates": "imagenet-cn"},
        protocol=CLIP_BENCHMARK_EVAL[0], protocol_version=CLIP_BENCHMARK_EVAL[1], split_aliases={"val": "test"}))
    specs.append(DatasetSpec(
        name="text2image-cn", task="text-to-image", format="cclip-tsv", default_split="test",
        splits=("train", "valid", "test"), loader=loaders.load_cclip_text_to_image,
        source="any set in the Chinese-CLIP layout (e.g. COCO-CN, MUGE valid)",
        layout=_CCLIP_LAYOUT + "\n(each prompt's first image id is its reference image)",
        description="generic Chinese text-to-image generation set: prompts + reference images",
        params={"rebuild_index": "1 to rebuild the TSV index"}, split_aliases=dict(loaders.CCLIP_SPLIT_ALIASES)))
    return specs


_REGISTRY: Dict[str, DatasetSpec] = {s.name: s for s in _builtin()}

ELEVATER_PREFIX = "elevater-cn/"


def _elevater_spec(sub: str) -> DatasetSpec:
    return DatasetSpec(
        name=ELEVATER_PREFIX + sub, task="classification", format="elevater", default_split="test",
        splits=("test",), loader=loaders.load_elevater,
        source="ELEVATER image-classification sets with Chinese labels (Chinese-CLIP zero-shot data)",
        layout=_ELEVATER_LAYOUT.replace("<root>", f"<root>[/{sub}]"),
        description=f"ELEVATER-CN {sub}: zero-shot classification",
        params={"templates": "'|'-separated templates overriding the defaults"},
        options={"subdir": sub, "templates": "default"},
        protocol=CLIP_BENCHMARK_EVAL[0], protocol_version=CLIP_BENCHMARK_EVAL[1], split_aliases={"val": "test"})


def register(spec: DatasetSpec) -> None:
    """Add (or replace) a dataset in the registry."""
    _REGISTRY[spec.name] = spec


def list_datasets() -> List[DatasetSpec]:
    """Every registered dataset (``elevater-cn/<name>`` is listed once as a pattern)."""
    return list(_REGISTRY.values()) + [_elevater_spec("<name>")]


def dataset_names() -> List[str]:
    return [s.name for s in list_datasets()]


def get_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; an unknown name raises :class:`UnknownDatasetError` listing the known ones."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key.startswith(ELEVATER_PREFIX) and len(key) > len(ELEVATER_PREFIX) and "<" not in key:
        return _elevater_spec(name.strip()[len(ELEVATER_PREFIX):])
    raise UnknownDatasetError(unknown("dataset", name, dataset_names()))


def load_dataset(name: str, root: PathLike, split: Optional[str] = None, *, lenient: bool = False,
                 **params: Any):
    """Load dataset ``name`` from ``root`` (its official layout) as a task data object.

    ``split`` defaults to the split the paper evaluates. ``lenient=True`` skips malformed lines
    (listed in ``data.issues``, counted in ``data.stats``) instead of raising ``DatasetFormatError``.
    ``params`` are dataset parameters (``images=DIR``, ``num_images=N``, ... see ``get_spec(name).params``).
    """
    spec = get_spec(name)
    split = spec.check_split(split, params)
    ctx = loaders.LoadContext(spec=spec, root=Path(root), split=split, params=params,
                              log=ParseLog(lenient=lenient))
    with gc_paused():
        data = spec.loader(ctx)
    if ctx.log.skipped:
        logger.info("%s/%s: %d malformed lines skipped, e.g. %s", spec.name, split,
                       len(ctx.log.skipped), ctx.log.skipped[0])
    if ctx.log.duplicates or ctx.log.empty:
        logger.info("%s/%s: %s", spec.name, split, ctx.log.counts())
    return data
