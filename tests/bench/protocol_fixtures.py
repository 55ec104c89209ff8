"""Conformance fixtures and independent re-implementations of the reference evaluations.

The reference algorithms below are written from reading the reference code (yuxie11/R2D2
``train_r2d2_retrieval.py::itm_eval`` and ``data/*_dataset.py``, ``train_r2d2_matching.py`` with sklearn's
``roc_auc_score``; OFA-Sys/Chinese-CLIP ``cn_clip/eval/make_topk_predictions(_tr).py``,
``evaluation(_tr).py``, ``transform_ir_annotation_to_tr.py``, ``data.py::_preprocess_text``;
LAION-AI/CLIP_benchmark ``zeroshot_classification``), not imported from ccmb, so a test comparing the two
checks ccmb against an independent reading.

Scores come from :func:`grid_score`: a deterministic function of (image index, text) with seven levels, so
exact ties are everywhere. :class:`GridAdapter` is a model whose dot products are exactly those scores
(one-hot image embeddings, text embeddings holding the scores), so ``ccmb-bench run`` can be checked end to end.
"""
from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ccmb_bench.adapters import ModelAdapter

N_IMAGES = 24
LEVELS = 7


def grid_score(image: int, text: str) -> np.float32:
    return np.float32((zlib.crc32(f"{image}|{text}".encode("utf-8")) % LEVELS) / LEVELS)


def image_bytes(index: int) -> bytes:
    """A tiny PNG whose first pixel encodes ``index`` (the adapter reads it back)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (index % 256, index // 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


class GridAdapter(ModelAdapter):
    """Image ``i`` -> one-hot e_i; text t -> [grid_score(i, t) for i]: the cosine matrix is the score grid."""

    name = "grid"
    kind = "test"
    fingerprint = "grid:1"

    def preprocess(self, images):
        return torch.tensor([img.getpixel((0, 0))[0] + 256 * img.getpixel((0, 0))[1] for img in images])

    def encode_images(self, pixel_values, with_hidden=False):
        return {"embeds": torch.nn.functional.one_hot(pixel_values.long(), N_IMAGES).float()}

    def encode_texts(self, texts, with_hidden=False):
        return {"embeds": torch.tensor([[float(grid_score(i, t)) for i in range(N_IMAGES)] for t in texts],
                                       dtype=torch.float32)}


# ------------------------------------------------------------------------------------------- fixtures

QUERIES = ["红色圆形", "蓝色方块", "绿色三角", "黄色星星", "红色圆形图片", "小猫", "小狗", "蓝天"]


def _jl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build_r2d2_sets(root: Path) -> None:
    """IQR (retrieval) and ICM (matching) in the R2D2 layout, with repeated texts, repeated lines, repeated
    pairs with different labels, and score ties."""
    imgs = root / "IQR_IQM_ICR_ICM_images"
    imgs.mkdir(parents=True)
    for i in range(N_IMAGES):
        (imgs / f"r{i}.jpg").write_bytes(image_bytes(i))
    lines = []
    for j in range(40):  # identical search queries on different images
        lines.append({"text": QUERIES[(j * 5) % len(QUERIES)], "image_path": f"images/r{j % N_IMAGES}.jpg"})
    lines += [lines[3], lines[7], lines[7], {"text": QUERIES[1], "image_path": "r5.jpg"}]  # repeated lines
    (root / "IQR" / "val").mkdir(parents=True)
    (root / "IQR" / "val" / "short_itr_val.json").write_text(_jl(lines), encoding="utf-8")
    pairs = []
    for j in range(36):
        pairs.append({"text": QUERIES[j % len(QUERIES)], "image_path": f"r{(j * 7) % N_IMAGES}.jpg",
                      "label": int(j % 3 == 0)})
    pairs += [dict(pairs[0], label=0), pairs[4], dict(pairs[5], label=1)]  # repeated pairs, changed labels
    (root / "ICM" / "val").mkdir(parents=True)
    (root / "ICM" / "val" / "long_itm_val.json").write_text(_jl(pairs), encoding="utf-8")


def build_flickr_cna(root: Path) -> None:
    """Flickr30k-CNA test: 24 images x 2 captions, a repeated ``<id>#<k>`` with another caption, and one
    caption shared by different images."""
    fl = root / "Flickr30k-images"
    fl.mkdir(parents=True)
    lines = []
    for i in range(N_IMAGES):
        (fl / f"{1000 + i}.jpg").write_bytes(image_bytes(i))
        lines.append(f"{1000 + i}#0\t{QUERIES[i % len(QUERIES)]}的照片")
        lines.append(f"{1000 + i}#1\t一张图片")  # identical captions on different images
    lines.insert(10, f"{1003}#0\t另一个描述")  # repeated id, different caption
    lines.append(f"{1007}#1\t一张图片")  # repeated id, same caption
    (root / "Flickr30k-CNA" / "test").mkdir(parents=True)
    (root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


CCLIP_IDS = [9, 10, 100, 11, 2, 20, 3, 300, 31, 4, 41, 5, 55, 6, 61, 7, 70, 8, 81, 90, 1000, 12, 13, 14]


def build_cclip(root: Path) -> None:
    """COCO-CN test in the Chinese-CLIP layout: ids whose byte order differs from the file order, texts that
    text cleaning changes, texts without images and images without texts."""
    d = root / "COCO-CN"
    d.mkdir(parents=True)
    (d / "test_imgs.tsv").write_text("".join(f"{iid}\t{base64.b64encode(image_bytes(k)).decode()}\n"
                                             for k, iid in enumerate(CCLIP_IDS)), encoding="utf-8")
    texts = []
    for t in range(30):
        text = ["A Red Ball", "一只“小猫”", "蓝色方块", "a red ball", "GREEN 三角"][t % 5] + ("" if t % 2 else "。")
        ids = [] if t in (4, 17) else [CCLIP_IDS[(t * 5) % 21]] + ([CCLIP_IDS[(t * 3) % 21]] if t % 4 == 0 else [])
        texts.append({"text_id": t, "text": text, "image_ids": ids})
    (d / "test_texts.jsonl").write_text(_jl(texts), encoding="utf-8")


def build_all(root: Path) -> Path:
    build_r2d2_sets(root)
    build_flickr_cna(root)
    build_cclip(root)
    return root


# ------------------------------------------------------------------------------ R2D2 reference (reading)

def r2d2_read_itr(path: Path):
    """``icr_retrieval_eval.__init__``: every line one text; images numbered by first appearance."""
    text, txt2img, img2txt, img_ids, images = [], {}, {}, {}, []
    for line in open(path, encoding="utf8"):
        d = json.loads(line)
        image_path = d["image_path"].split("/")[-1]
        fn = image_path[:-4]
        if fn not in img_ids:
            img_ids[fn] = len(img_ids)
            images.append(fn)
        img2txt.setdefault(img_ids[fn], []).append(len(text))
        txt2img[len(text)] = img_ids[fn]
        text.append(d["text"])
    return text, images, txt2img, img2txt


def r2d2_read_flickr(path: Path):
    """``flickr30k_cna_retrieval_eval.__init__``: every line one caption."""
    text, txt2img, img2txt, img_ids, images = [], {}, {}, {}, []
    for line in open(path, encoding="utf8"):
        parts = line.strip().split("\t")
        fn = parts[0].split("#")[0]
        if fn not in img_ids:
            img_ids[fn] = len(img_ids)
            images.append(fn)
        img2txt.setdefault(img_ids[fn], []).append(len(text))
        txt2img[len(text)] = img_ids[fn]
        text.append(parts[1].strip())
    return text, images, txt2img, img2txt


def r2d2_itm_eval(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img, img2txt) -> Dict[str, float]:
    def recalls(scores, hit):
        r1 = r5 = r10 = 0
        for index, score in enumerate(scores):
            inds = np.argsort(score)[::-1]
            for k in range(10):
                if hit(index, inds[k]):
                    r10 += 1
                    r5 += k < 5
                    r1 += k < 1
                    break
        n = scores.shape[0]
        return 100.0 * r1 / n, 100.0 * r5 / n, 100.0 * r10 / n

    tr = recalls(scores_i2t, lambda q, c: c in img2txt[q])
    ir = recalls(scores_t2i, lambda q, c: c == txt2img[q])
    return {"i2t_R@1": tr[0], "i2t_R@5": tr[1], "i2t_R@10": tr[2], "t2i_R@1": ir[0], "t2i_R@5": ir[1],
            "t2i_R@10": ir[2], "MR": (sum(tr) / 3 + sum(ir) / 3) / 2}


def r2d2_retrieval(text: List[str], images: List[str], txt2img, img2txt, image_index) -> Dict[str, float]:
    grid = np.array([[grid_score(image_index(im), t) for t in text] for im in images], dtype=np.float32)
    return r2d2_itm_eval(grid, np.ascontiguousarray(grid.T), txt2img, img2txt)


def sklearn_roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC curve at every distinct threshold (descending), area by the trapezoid rule (as roc_auc_score)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (1 + last) - tps
    tpr = np.r_[0, tps] / tps[-1]
    fpr = np.r_[0, fps] / fps[-1]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2) * 100.0)


def r2d2_matching(path: Path, image_index) -> Dict[str, float]:
    """``ITM360Dataset`` + ``Lite.eval``: every line one pair, AUC by roc_auc_score."""
    labels, scores = [], []
    for line in open(path, encoding="utf8"):
        d = json.loads(line)
        labels.append(int(d["label"]))
        scores.append(float(grid_score(image_index(d["image_path"].split("/")[-1][:-4]), d["text"])))
    return {"AUC": sklearn_roc_auc(labels, scores)}


# ---------------------------------------------------------------------- Chinese-CLIP reference (reading)

def cclip_preprocess_text(text: str) -> str:
    return text.lower().replace("“", "\"").replace("”", "\"")


def cclip_recall(ref: Dict, preds: Dict) -> Tuple[float, float, float]:
    """``evaluation(_tr).py``: a query is a hit at K when any of its reference ids is among its top-K."""
    stats = [0, 0, 0]
    for qid in ref:
        gt = set(ref[qid])
        for j, k in enumerate((1, 5, 10)):
            stats[j] += any(idx in preds[qid][:k] for idx in gt)
    return tuple(100.0 * s / len(ref) for s in stats)  # type: ignore[return-value]


def cclip_retrieval(texts_path: Path, ids: List[int]) -> Dict[str, float]:
    """extract_features (images in LMDB key order, texts in file order) -> make_topk_predictions(_tr) ->
    evaluation(_tr)."""
    lmdb_order = sorted(ids, key=lambda i: str(i).encode("utf-8"))
    k_of = {iid: k for k, iid in enumerate(ids)}
    rows = [json.loads(line) for line in open(texts_path, encoding="utf-8")]
    text_feats = [(r["text_id"], cclip_preprocess_text(r["text"])) for r in rows]
    reference = {r["text_id"]: r["image_ids"] for r in rows}

    t2i_preds = {}
    for text_id, text in text_feats:
        score_tuples = [(iid, float(grid_score(k_of[iid], text))) for iid in lmdb_order]
        t2i_preds[text_id] = [e[0] for e in sorted(score_tuples, key=lambda x: x[1], reverse=True)[:10]]
    t2i = cclip_recall(reference, t2i_preds)
    tr_reference: Dict[int, List[int]] = {}
    for r in rows:  # transform_ir_annotation_to_tr
        for iid in r["image_ids"]:
            tr_reference.setdefault(iid, []).append(r["text_id"])
    i2t_preds = {}
    for iid in lmdb_order:
        score_tuples = [(tid, float(grid_score(k_of[iid], text))) for tid, text in text_feats]
        i2t_preds[iid] = [e[0] for e in sorted(score_tuples, key=lambda x: x[1], reverse=True)[:10]]
    i2t = cclip_recall(tr_reference, i2t_preds)
    out = {f"t2i_R@{k}": v for k, v in zip((1, 5, 10), t2i)}
    out.update({f"i2t_R@{k}": v for k, v in zip((1, 5, 10), i2t)})
    out["MR"] = (sum(t2i) + sum(i2t)) / 6
    return out


# -------------------------------------------------------------------- CLIP_benchmark reference (reading)

def clip_benchmark_classification(logits: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """``zeroshot_classification.evaluate``: with at least 5 classes ``accuracy(logits, target, topk=(1, 5))``,
    else ``accuracy(..., topk=(1,))`` and ``acc5 = float("nan")``; ``balanced_accuracy_score(target,
    logits.argmax(1))``. ``accuracy`` ranks by ``output.topk(max(topk), 1, True, True)``."""
    topk = (1, 5) if logits.shape[1] >= 5 else (1,)
    pred = logits.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    acc = [float(correct[:k].reshape(-1).float().sum()) / len(target) * 100.0 for k in topk]
    top1 = logits.argmax(dim=1)
    recalls = [float((top1[target == c] == c).double().mean()) for c in torch.unique(target)]
    return {"top1": acc[0], "top5": acc[1] if len(acc) > 1 else float("nan"),
            "mean_per_class_recall": float(np.mean(recalls)) * 100.0}


# ----------------------------------------------------------------------- strict rules (today's ccmb)

def merge_pairs(pairs: List[Tuple[str, str]]) -> Tuple[List[str], List[set]]:
    """R2D2 files under the strict rules: identical texts are one query with every image they were paired
    with (a repeated (text, image) line adds nothing)."""
    texts: List[str] = []
    positives: List[set] = []
    for text, image in pairs:
        if text not in texts:
            texts.append(text)
            positives.append(set())
        positives[texts.index(text)].add(image)
    return texts, positives


def strict_retrieval(texts: List[str], positives: List[set], images: List, image_index) -> Dict[str, float]:
    """Strict rules: a query is a hit at K when fewer than K non-positive candidates score at least as much as
    its best positive; queries without positives are not counted."""
    grid = np.array([[grid_score(image_index(im), t) for t in texts] for im in images], dtype=np.float32)
    t2i = {q: {images.index(im) for im in pos} for q, pos in enumerate(positives)}
    i2t = {i: {t for t, imgs in t2i.items() if i in imgs} for i in range(len(images))}

    def ranks(mat, pos_of):
        out = []
        for q, row in enumerate(mat):
            pos = pos_of.get(q, set())
            if not pos:
                continue
            best = max(row[c] for c in pos)
            out.append(sum(1 for c, v in enumerate(row) if c not in pos and v >= best))
        return np.array(out)

    out: Dict[str, float] = {}
    recalls = []
    for d, r in (("i2t", ranks(grid, i2t)), ("t2i", ranks(grid.T, t2i))):
        for k in (1, 5, 10):
            out[f"{d}_R@{k}"] = float((r < k).mean() * 100.0)
            recalls.append(out[f"{d}_R@{k}"])
    out["MR"] = float(np.mean(recalls))
    return out


# ------------------------------------------------- Chinese-CLIP end to end, from the TSV ids (edge cases)

class ReferenceFailure(RuntimeError):
    """Where the reference scripts raise (ccmb's official protocol must refuse these inputs)."""


def cclip_reference_eval(texts_path: Path, tsv_ids: List[str], index_of: Dict[str, int],
                         directions: Sequence[str] = ("i2t", "t2i")) -> Dict[str, float]:
    """The whole Chinese-CLIP evaluation from the TSV: ``build_lmdb_dataset`` (LMDB keys = the TSV id strings,
    read back by a cursor in byte order), ``extract_features`` (image id ``int(key)``; texts
    ``(obj['text_id'], _preprocess_text(str(obj['text'])))``), ``make_topk_predictions(_tr)`` (top 10 of
    ``sorted(score_tuples, key=score, reverse=True)``), ``evaluation(_tr).read_submission`` (exactly 10
    predictions per query, every reference query predicted, no duplicates) and the recall. ``index_of[tsv
    id]`` is the image's index for :func:`grid_score`. Raises :class:`ReferenceFailure` where those scripts
    raise."""
    lmdb = sorted(tsv_ids, key=lambda s: s.encode("utf-8"))
    try:
        images = [(int(k), index_of[k]) for k in lmdb]
    except ValueError as exc:
        raise ReferenceFailure(f"extract_features: {exc}") from None
    rows = [json.loads(line.strip()) for line in open(texts_path, encoding="utf-8")]
    texts = [(r["text_id"], cclip_preprocess_text(str(r["text"]))) for r in rows]
    reference = {r["text_id"]: r["image_ids"] for r in rows}

    def read_submission(preds: Dict, ref: Dict) -> Dict:
        for qid, ids in preds.items():
            if len(ids) != 10:
                raise ReferenceFailure(f"{qid} has {len(ids)} predictions, 10 required")
            if len(set(ids)) != 10:
                raise ReferenceFailure(f"{qid}: duplicate predictions")
        missing = set(ref) - set(preds)
        if missing:
            raise ReferenceFailure(f"no prediction for {sorted(missing, key=str)}")
        return preds

    def top10(queries, candidates, score) -> Dict:  # make_topk_predictions(_tr): sorted(..., reverse=True)[:10]
        return {qid: [e[0] for e in sorted(((cid, score(q, c)) for cid, c in candidates), key=lambda x: x[1],
                                           reverse=True)[:10]] for qid, q in queries}

    out: Dict[str, float] = {}
    recalls: List[float] = []
    if "t2i" in directions:
        preds = top10(texts, images, lambda text, idx: float(grid_score(idx, text)))
        t2i = cclip_recall(reference, read_submission(preds, reference))
        out.update({f"t2i_R@{k}": v for k, v in zip((1, 5, 10), t2i)})
        recalls += list(t2i)
    if "i2t" in directions:
        tr: Dict = {}
        for r in rows:  # transform_ir_annotation_to_tr
            for iid in r["image_ids"]:
                tr.setdefault(iid, []).append(r["text_id"])
        preds = top10(images, texts, lambda idx, text: float(grid_score(idx, text)))
        i2t = cclip_recall(tr, read_submission(preds, tr))
        out.update({f"i2t_R@{k}": v for k, v in zip((1, 5, 10), i2t)})
        recalls += list(i2t)
    out["MR"] = sum(recalls) / len(recalls)
    return out
