# temporary tuning sweep (deleted after use)
import sys, traceback, torch, triton
from triton.testing import do_bench
import torch.nn.functional as F
from numina_engine.kernels import frame_attention as fa, cross_attention_noun_maps as nm, cross_attention_column_bias as cb
from numina_engine.kernels._triton import LaunchConfig as C
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
T, NF, H, D = 1560, 21, 12, 128
L = T * NF
def med(fn): return do_bench(fn, warmup=50, rep=300, return_mode="median")
for B in (1,):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = [(torch.randn(B, L, H, D, device="cuda", generator=g)).bfloat16() for _ in range(3)]
    sd = med(lambda: F.scaled_dot_product_attention(q.transpose(1,2), k.transpose(1,2), v.transpose(1,2)))
    print(f"B{B} sdpa self {sd:.3f}", flush=True)
    for cfg in [C(128,64,4,3), C(128,64,8,3), C(128,128,8,3), C(128,128,8,2), C(128,64,8,4), C(128,128,4,3), C(64,64,4,3), C(64,128,4,3)]:
        fa._FORWARD_CONFIGS[128] = cfg
        try:
            t = med(lambda: fa.attention_with_frame_lse(q, k, v, frame_tokens=T, num_frames=NF))
            print(f"B{B} fwd {cfg} {t:.3f} ms  x{t/sd:.2f}", flush=True)
        except Exception as e:
            print(f"B{B} fwd {cfg} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    fa._FORWARD_CONFIGS[128] = C(128,128,8,3)
    _, lse = fa.attention_with_frame_lse(q, k, v, frame_tokens=T, num_frames=NF)
    for cfg in [C(64,128,4,2), C(128,128,8,2), C(64,64,4,2), C(128,64,4,3), C(128,128,4,2), C(64,256,8,2)]:
        fa._MAPS_CONFIGS[128] = cfg
        try:
            t = med(lambda: fa.frame_attention_maps(q, k, lse, frame_tokens=T, num_frames=NF))
            print(f"maps {cfg} {t:.3f} ms ({NF*H*T*T*4/t/1e9:.0f} GB/s)", flush=True)
        except Exception as e:
            print(f"maps {cfg} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    del q, k, v
for B in (1, 2):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, L, H, D, device="cuda", generator=g).bfloat16()
    k, v = [torch.randn(B, 512, H, D, device="cuda", generator=g).bfloat16() for _ in range(2)]
    sd = med(lambda: F.scaled_dot_product_attention(q.transpose(1,2), k.transpose(1,2), v.transpose(1,2)))
    print(f"B{B} sdpa cross {sd:.3f}", flush=True)
    nt = torch.tensor([[5,-1,-1],[9,10,11]], dtype=torch.int32, device="cuda")
    cols = torch.tensor([5,9,10,11], dtype=torch.int32, device="cuda"); bias = torch.randn(L, 4, device="cuda")
    for cfg in [C(128,64,8,3), C(128,64,4,3), C(64,64,4,3), C(128,128,8,2), C(64,128,4,2), C(128,32,4,3), C(64,64,4,2)]:
        nm._GPU_CONFIGS[128] = cfg; cb._GPU_CONFIGS[128] = cfg
        try:
            t1 = med(lambda: nm.cross_attention_with_noun_maps(q, k, v, nt))
            t2 = med(lambda: cb.cross_attention_with_column_bias(q, k, v, cols, bias))
            print(f"B{B} cross {cfg} noun {t1:.3f} (x{t1/sd:.2f}) bias {t2:.3f} (x{t2/sd:.2f})", flush=True)
        except Exception as e:
            print(f"B{B} cross {cfg} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
