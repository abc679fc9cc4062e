"""lm-evaluation-harness model ``grootl``: HFLM with tree scanning and per-request contexts.

Importing this module registers the model name ``grootl`` with lm_eval. lm_eval 0.4.x finds
models only through its own registry (it reads no plugin entry points), so run the harness
through ``python -m grootvl.grootl.lm_eval_cli`` (same flags as ``lm_eval``), or import this
module before calling ``lm_eval.simple_evaluate(model="grootl", ...)``::

    python -m grootvl.grootl.lm_eval_cli --model grootl \\
        --model_args pretrained=DIR,tree_scale=0.3 --tasks piqa,arc_easy

Log-likelihoods are scored with the GrootL context of each request: the request's context
tokens (what precedes the continuation) form the text tree's context, one length per row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from .model import enable_tree_scanning


@register_model("grootl")
class GrootLM(HFLM):
    """``HFLM`` for a Mamba causal LM with GrootL tree scanning.

    Extra model_args: ``tree_scale`` (default: the value saved in the model's config, else
    0.3). ``logits_cache`` defaults to False: HFLM's cache shares logits between requests
    whose context/continuation split differs, which changes a GrootL context.
    """

    def __init__(self, pretrained, tree_scale: float | None = None, logits_cache: bool = False, **kwargs):
        super().__init__(pretrained=pretrained, logits_cache=logits_cache, **kwargs)
        if self.backend != "causal":
            raise ValueError(f"grootl evaluates causal Mamba language models, got backend {self.backend!r}")
        enable_tree_scanning(self._model, tree_scale=None if tree_scale is None else float(tree_scale))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(log-probability of the continuation, whether it is the greedy output) per request.

        Each request is (cache key, context token ids, continuation token ids). The model sees
        (context + continuation)[:-1], cut from the left to ``max_length``; its GrootL context
        is the context part of that window.
        """
        batch_size = override_bs or self.batch_size
        if not isinstance(batch_size, int):  # "auto": HFLM's own probe at full length
            batch_size = self._detect_batch_size()
        windows = []
        for _, context, continuation in requests:
            if not context or not continuation:
                raise ValueError("each loglikelihood request needs a non-empty context and continuation")
            window = (context + continuation)[-(self.max_length + 1):][:-1]
            windows.append((window, len(continuation), max(len(window) - len(continuation) + 1, 0)))
        by_length = sorted(range(len(requests)), key=lambda i: -len(windows[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests (grootl)")
        for start in range(0, len(by_length), batch_size):
            rows = by_length[start:start + batch_size]
            width = len(windows[rows[0]][0])
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            inputs = torch.full((len(rows), width), pad, dtype=torch.long)
            for r, i in enumerate(rows):
                inputs[r, :len(windows[i][0])] = torch.tensor(windows[i][0])
            contexts = torch.tensor([windows[i][2] for i in rows])
            with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                 enabled=self.mixed_precision_dtype is not None):
                logits = self.model(inputs.to(self.device), context_length=contexts.to(self.device)).logits
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                window, cont_len, _ = windows[i]
                request_key, _, continuation = requests[i]
                scored = log_probs[r, len(window) - cont_len:len(window)]
                target = torch.tensor(continuation, device=scored.device)
                answer = (float(scored.gather(1, target[:, None]).sum()),
                          bool((scored.argmax(dim=-1) == target).all()))
                results[i] = answer
                if request_key is not None:
                    self.cache_hook.add_partial("loglikelihood", request_key, answer)
                progress.update(1)
        progress.close()
        return results
