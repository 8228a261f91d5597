"""Does a flash-attn build run here, and does it beat SDPA at Wan2.1-1.3B's self-attention shape?

Tries, in order, FlashAttention-4 (`flash_attn.cute`, package flash-attn-4), FlashAttention-3
(`flash_attn_interface`) and FlashAttention-2 (`flash_attn`); for each that imports, runs one
self-attention at [1, 32760, 12, 128] bf16 against SDPA (relative error, CUDA-event median time).
Prints one JSON object.

    python -m bench.probe_flash_attn
"""
from __future__ import annotations

import importlib
import json
import traceback

import torch
import torch.nn.functional as F

from bench.timing import median_ms




CANDIDATES = (("flash-attn-4", "flash_attn.cute", "flash_attn_func"),
              ("flash-attn-3", "flash_attn_interface", "flash_attn_func"),
              ("flash-attn-2", "flash_attn", "flash_attn_func"))


def main() -> None:
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 12, 128, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    sdpa = lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    reference = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "sdpa_ms": median_ms(sdpa),
              "sdpa_rel_err": ((sdpa().float() - reference).norm() / reference.norm()).item()}
    for name, module_name, function in CANDIDATES:
        try:
            attention = getattr(importlib.import_module(module_name), function)
        except Exception as err:                      # not installed, or fails to import
            result[name] = {"imports": False, "error": f"{type(err).__name__}: {err}"[:300]}
            continue
        try:
            def call():
                out = attention(q, k, v)
                return out[0] if isinstance(out, tuple) else out
            out = call().float()
            result[name] = {"imports": True, "runs": True, "ms": median_ms(call),
                            "rel_err": ((out - reference).norm() / reference.norm()).item()}
        except Exception:
            result[name] = {"imports": True, "runs": False, "error": traceback.format_exc()[-600:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
