"""A lean decode step for GPT-2 and Llama-family models (Llama, Mistral, Qwen2, Qwen3, Phi-3): the Hugging Face
model's own weights and small modules, with the attention, KV cache, LM head, argmax and stop update written for
decoding (after gpt-fast).

Why: under a CUDA graph the Hugging Face step still costs ~0.76 ms at batch 1 on an H200 (cache bookkeeping,
masks built per layer, the whole forward's generality), while reading GPT-2 small's weights takes ~0.12 ms.
Here a step is what decoding needs and nothing else, so torch.compile(fullgraph=True) can fuse it into few
kernels and one CUDA graph replays it:
- the KV cache is one preallocated [B, kv_heads, P + N, head_dim] pair per layer, written in place at the
  step's position (an index_put that inductor keeps in place; in a GPT-2 decode step on CUDA, the attention
  kernel writes it, below);
- a step's attention is, on CUDA, one Triton kernel (flash_decode.py) whose loop stops at the filled length
  read on the device, so shapes stay fixed for the CUDA graph; elsewhere a few fused reductions over the whole
  cache with a positions mask built once per step (not per layer); for GPT-2 that kernel also sums c_attn's
  output, adds its bias and writes K/V into the cache itself (fused_qkv);
- norms and activations are the model's own modules, called as they are; projections read the model's own
  weights (no copies), through skinny.py's matmul on CUDA when a step has 1-32 rows (cuBLAS's
  split-K kernels read those weights at a fifth of copy bandwidth there), through the module itself otherwise;
- on CUDA at 1-32 rows, the LM head and the greedy pick are one kernel (head_argmax.py) that never writes the
  logits;
- on Hopper, the kernels launch as programmatic dependents (pdl), so a projection reads its weights while the kernel
  before it still runs (skinny.py);
- optionally (fused_epilogues), GEMMs that sum their own slabs and add the bias, GELU, SiLU(gate) * up or the
  residual, with each norm after the first in the next GEMM's prologue (epilogue.py): a GPT-2 layer in five
  kernels.

The Llama family differs in a few places, each taken from the model's own modules: Qwen2's q/k/v biases (any
projection's bias is added), Qwen3's per-head q/k RMSNorm before RoPE (``q_norm``, ``k_norm``), Phi-3's fused
``qkv_proj`` and ``gate_up_proj`` (split as its modules split them) and partial rotary (the first
``partial_rotary_factor * head_dim`` dims rotate). RoPE's cos/sin come from the model's rotary module, once for
every position: exact for rope types whose frequencies are fixed at init (STATIC_ROPE), and for dynamic and
longrope up to the length where they would change (LENGTH_DEPENDENT_ROPE). A sliding window (Mistral, Qwen2,
Phi-3 configs) is refused where it would bind, i.e. for a cache longer than the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import epilogue, flash_decode, head_argmax, skinny

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3")
# RoPE types whose inverse frequencies are fixed when the rotary module is built.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
# RoPE types whose frequencies follow the longest sequence a forward sees (transformers' dynamic_rope_update): the
# original ones up to the model's original length, others past it, which one table for every position cannot
# follow. The lean step runs them up to that length (new_cache refuses longer caches), e.g. Phi-3-mini-128k's and
# Phi-4-mini's longrope up to 4096 positions.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def hopper(device: torch.device) -> bool:
    """Programmatic dependent launch runs here: a CUDA device of compute capability 9.0 or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def kv_heads_and_dim(config: object) -> tuple[int, int]:
    """(K/V heads, head dim) of a decoder's cache: GQA models (Llama) cache num_key_value_heads, not all heads."""
    heads = config.num_attention_heads
    return (getattr(config, "num_key_value_heads", None) or heads,
            getattr(config, "head_dim", None) or config.hidden_size // heads)


class LeanModel(nn.Module):
    """Wraps a GPT2LMHeadModel or a Llama-family *ForCausalLM (SUPPORTED);
    forward(tokens, positions, caches) -> last logits [B, V]; pick(...) -> their greedy tokens [B]."""

    def __init__(self, model: nn.Module, *, fused_qkv: bool = True, fused_head: bool = True,
                 skinny_max_rows: int = skinny.MAX_ROWS, skinny_min_rows: int = skinny.MIN_ROWS,
                 skinny_max_splits: int = skinny.MAX_SPLITS, skinny_fp32: str = skinny.FP32_PRECISION,
                 pdl: bool = False, fused_epilogues: bool = False) -> None:
        super().__init__()
        # fused_head (CUDA, bf16 or fp32, <= 32 rows): a decode step's LM head and greedy pick in one kernel
        # (head_argmax.py), never writing the logits. perf.lean_probe --ab on an H200, a call with / without: bf16
        # b=32 49.5 / 59.3 ms (050be22); fp32 in rounded TF32 b=1 33.7 / 35.0, b=32 54.4 / 57.5 (1783f31; with
        # tf32x3's three products it lost, 74.3 / 68.1).
        self.fused_head = fused_head
        # skinny_max_rows: the most rows a projection sends through skinny.py; skinny_fp32, how it multiplies fp32
        # under TF32 (rounded TF32; "tf32x3", fp32-accurate, was the precision until 2026-12-01, to 16 rows).
        self.skinny_max_rows = skinny_max_rows
        self.skinny_fp32 = skinny_fp32
        self.skinny_min_rows = skinny_min_rows  # 2: one row through the module (cuBLAS's GEMV), as before ef10c87
        self.skinny_max_splits = skinny_max_splits  # the most slabs of K a GEMM (skinny.MAX_SPLITS says why 7)
        # fused_qkv (GPT-2, CUDA): a step's attention reads c_attn's output or partial sums and writes K/V itself
        # (flash_decode.decode_attention_qkv), 3 fewer kernels per layer: 4-7% off a step on an H200
        # (docs/history/2026-11-lean-step.md, "ba0a269, 17f90c1, c8ce0d8"). False: the unfused step it is tested
        # against.
        self.fused_qkv = fused_qkv
        # pdl (CUDA, sm_90+): the step's Triton kernels as programmatic dependent launches, skinny.py's reading its
        # weights while the kernel before it runs, and inductor's kernels compiled to let them (caches.LeanKV turns
        # it on wherever it runs: perf.lean_probe --ab measured it faster at every batch and dtype it tried, with
        # one row through skinny.py; docs/history/2026-11-lean-step.md, "6de8be4, ce9733f" and "ef10c87").
        if pdl and not hopper(model.lm_head.weight.device):
            raise ValueError("pdl=True needs a CUDA device of compute capability 9.0 or newer (Hopper)")
        self.pdl = pdl
        # fused_epilogues (a decode step at skinny.py's rows; GPT-2 with a tanh GELU and fused_qkv, the Llama family
        # with SiLU and no MLP biases): the bias, activation and residual add in the GEMMs that sum their own slabs,
        # and each norm after the first in the next GEMM's prologue (epilogue.py). Off until measured on a GPU:
        # tested in Triton's interpreter only (2026-12-08, perf/RESULTS.md "Kernels per step");
        # perf.lean_probe --ab fused_epilogues.
        self.fused_epilogues = fused_epilogues
        config = model.config
        kind = config.model_type
        if kind not in SUPPORTED:
            raise ValueError(f"the lean step supports {', '.join(SUPPORTED)} models; this one is {kind!r}")
        self.kind, self.hf = kind, model  # a submodule: its parameters are the ones we read
        self.n_head = config.num_attention_heads
        self.n_kv_head, self.head_dim = kv_heads_and_dim(config)
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sliding_window: int | None = None
        self.rope_limit: int | None = None  # the longest cache whose RoPE table one call of the rotary module gives
        if kind == "gpt2":
            if config.reorder_and_upcast_attn:
                raise ValueError("the lean step does not implement GPT-2's reorder_and_upcast_attn")
            self.layers = model.transformer.h
            self.scales = [(self.head_dim**-0.5 if config.scale_attn_weights else 1.0)
                           / (i + 1 if config.scale_attn_by_inverse_layer_idx else 1) for i in range(len(self.layers))]
            # the fused layers attend with fused_qkv's kernel, and apply a tanh GELU only
            self.fused_epilogues &= fused_qkv and config.activation_function in epilogue.GELU_TANH
        else:
            attn = model.model.layers[0].self_attn
            self.head_dim = attn.head_dim  # the module's own: Qwen3 and Mistral may set head_dim in the config
            rotary = model.model.rotary_emb
            if rotary.rope_type not in STATIC_ROPE + LENGTH_DEPENDENT_ROPE:
                raise ValueError(f"the lean step does not implement rope type {rotary.rope_type!r}; it implements "
                                 f"{', '.join(STATIC_ROPE + LENGTH_DEPENDENT_ROPE)}")
            if rotary.rope_type == "longrope":  # where dynamic_rope_update switches to the long factors
                self.rope_limit = config.rope_parameters["original_max_position_embeddings"]
            elif rotary.rope_type == "dynamic":  # where it starts to grow the frequencies
                self.rope_limit = rotary.original_max_seq_len
            unknown = set(getattr(config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
            if unknown:
                raise ValueError(f"the lean step does not implement layer types {sorted(unknown)}")
            # Mistral and Phi-3 apply it to every layer; Qwen2/3 set it only with use_sliding_window, and then to
            # some layers: either way a cache no longer than the window never meets it (new_cache checks).
            self.sliding_window = getattr(config, "sliding_window", None)
            self.layers = model.model.layers
            self.scales = [layer.self_attn.scaling for layer in self.layers]
            mlp = self.layers[0].mlp
            gate_up = (mlp.gate_up_proj,) if kind == "phi3" else (mlp.gate_proj, mlp.up_proj)
            self.fused_epilogues &= config.hidden_act in epilogue.SILU and all(p.bias is None for p in gate_up)
        if self.fused_epilogues:  # epilogue.py's counters: a buffer, so a CUDA graph replays the step with it
            self.register_buffer("tickets", epilogue.tickets(model.lm_head.weight.device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.hf.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.lm_head.weight.dtype

    def new_cache(self, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zeroed K and V per layer. Zeros, not empty: masked positions get weight 0, and 0 * NaN is NaN."""
        if self.sliding_window is not None and max_len > self.sliding_window:
            raise ValueError(f"the lean step attends over the whole cache: a {max_len}-position cache is longer than "
                             f"this model's sliding_window ({self.sliding_window}), which would bind")
        if self.rope_limit is not None and max_len > self.rope_limit:
            raise ValueError(f"the lean step computes RoPE once for the whole cache: a {max_len}-position cache is "
                             f"longer than {self.rope_limit}, past which rope type "
                             f"{self.hf.model.rotary_emb.rope_type!r} changes its frequencies")
        shape = (batch, self.n_kv_head, max_len, self.head_dim)
        if self.kind != "gpt2":  # RoPE cos/sin for every position, from the model's own rotary module, once
            rotary = self.hf.model.rotary_emb
            positions = torch.arange(max_len, device=self.device)[None]
            cos, sin = rotary(torch.empty(0, device=self.device, dtype=self.dtype), positions)
            if not torch.equal(rotary.inv_freq, rotary.original_inv_freq):  # e.g. grown by an earlier long forward
                raise ValueError(f"the model's rotary module ({rotary.rope_type!r}) no longer has its original "
                                 "frequencies, which a generation of this length would use")
            self.rope = cos[0], sin[0]
        return [(torch.zeros(shape, device=self.device, dtype=self.dtype),
                 torch.zeros(shape, device=self.device, dtype=self.dtype)) for _ in self.layers]

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """tokens [B, T] at `positions` [T] (device tensor): write their K/V, return the last position's logits."""
        return self.hf.lm_head(self.hidden(tokens, positions, caches))  # [B, V]: the last position's only

    def pick(self, tokens: torch.Tensor, positions: torch.Tensor,
             caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """forward(...).argmax(-1), [B]: with fused_head, in one kernel that never writes the logits, and where
        fused_epilogues wrote the statistics, with the final norm in its prologue."""
        h, stats = self._body(tokens, positions, caches)
        head, final = self.hf.lm_head, self._final_norm()
        if self.fused_head and head.bias is None and head_argmax.available(h):
            if stats is not None:
                return head_argmax.head_argmax(h, head.weight, self.pdl, _folded(stats, final))
            return head_argmax.head_argmax(final(h), head.weight, self.pdl)
        return head(final(h)).argmax(dim=-1)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor,
               caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The last position's final hidden state [B, hidden], K/V written: what the LM head reads."""
        return self._final_norm()(self._body(tokens, positions, caches)[0])

    def _final_norm(self) -> nn.Module:
        return self.hf.transformer.ln_f if self.kind == "gpt2" else self.hf.model.norm

    def _body(self, tokens: torch.Tensor, positions: torch.Tensor,
              caches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last position's hidden state [B, hidden] before the final norm, K/V written; and its statistics
        [blocks, B, 3] where epilogue.py's last GEMM wrote it (fused_epilogues), else None."""
        max_len = caches[0][0].shape[2]
        # [T, L]: position t may attend to cache slots <= its own position. Built once for all layers.
        mask = torch.arange(max_len, device=tokens.device)[None, :] <= positions[:, None]
        if self.kind == "gpt2":
            t = self.hf.transformer
            h = t.wte(tokens) + t.wpe(positions)[None]
            fused = self.fused_qkv and tokens.shape[1] == 1 and flash_decode.available(h)
            rows = h.view(-1, h.shape[-1])  # one token a row; epilogue.py's GEMMs are skinny.py's, as are its rows
            if fused and self.fused_epilogues and skinny.available(rows, self.skinny_max_rows, self.skinny_min_rows):
                return self._fused_layers(rows, positions, caches)
            for layer, scale, cache in zip(self.layers, self.scales, caches, strict=True):
                a, mlp = layer.attn, layer.mlp
                x = layer.ln_1(h)
                if fused:
                    attended = self._attend_qkv(a.c_attn, x, positions, cache, scale)
                else:
                    attended = self._attend(*self._project(a.c_attn, x).chunk(3, dim=-1), positions, mask, cache, scale)
                h = h + self._project(a.c_proj, attended)
                h = h + self._project(mlp.c_proj, mlp.act(self._project(mlp.c_fc, layer.ln_2(h))))
        else:
            m = self.hf.model
            h = m.embed_tokens(tokens)
            cos, sin = (table[positions][None] for table in self.rope)  # [1, T, head_dim]
            rows = h.view(-1, h.shape[-1])
            if (self.fused_epilogues and tokens.shape[1] == 1
                    and skinny.available(rows, self.skinny_max_rows, self.skinny_min_rows)):
                return self._fused_gated_layers(rows, cos, sin, positions, mask, caches)
            for layer, scale, cache in zip(self.layers, self.scales, caches, strict=True):
                a = layer.self_attn
                q, k, v = self._qkv(a, layer.input_layernorm(h))  # [B, T, heads * head_dim] each
                q = self._rotate(q, cos, sin, getattr(a, "q_norm", None))  # Qwen3 norms q and k per head
                k = self._rotate(k, cos, sin, getattr(a, "k_norm", None))
                h = h + self._project(a.o_proj, self._attend(q, k, v, positions, mask, cache, scale))
                h = h + self._project(layer.mlp.down_proj, self._gated(layer.mlp, layer.post_attention_layernorm(h)))
        return h[:, -1], None

    def _fused_layers(self, h: torch.Tensor, positions: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """GPT-2's layers for one decode step of h [B, hidden] -> ([B, hidden], its statistics), each in five kernels
        (epilogue.py): c_attn with ln_1 in its prologue (the first layer's ln_1 a kernel of its own), the attention,
        c_proj plus the residual, c_fc with ln_2 in its prologue and GELU, c_proj plus the residual."""
        stats, options = None, self._skinny_options()  # stats: h's, as the GEMM that wrote h left them
        for layer, scale, cache in zip(self.layers, self.scales, caches, strict=True):
            a, mlp, ln_1, ln_2 = layer.attn, layer.mlp, layer.ln_1, layer.ln_2
            x, norm = (ln_1(h), None) if stats is None else (h, _folded(stats, ln_1))
            parts = skinny.partials(x, a.c_attn.weight, norm=norm, **options)
            attended = flash_decode.decode_attention_qkv(parts, a.c_attn.bias, *cache, positions, scale, self.pdl)
            attended = attended.transpose(1, 2).reshape(h.shape[0], -1)
            h, stats = epilogue.linear(attended, a.c_proj.weight, a.c_proj.bias, self.tickets, residual=h, **options)
            f, _ = epilogue.linear(h, mlp.c_fc.weight, mlp.c_fc.bias, self.tickets, gelu=True,
                                   norm=_folded(stats, ln_2), **options)
            h, stats = epilogue.linear(f, mlp.c_proj.weight, mlp.c_proj.bias, self.tickets, residual=h, **options)
        return h, stats

    def _fused_gated_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                            mask: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Llama family's layers for one decode step of h [B, hidden] -> ([B, hidden], its statistics)
        (epilogue.py): q, k and v in one GEMM with input_layernorm in its prologue (the first layer's a kernel of its
        own), RoPE and the attention as hidden() runs them, o_proj plus the residual, gate and up with
        post_attention_layernorm in their prologue and SiLU-and-multiply, down_proj plus the residual."""
        stats, options = None, self._skinny_options()  # stats: h's, as the GEMM that wrote h left them
        for layer, scale, cache in zip(self.layers, self.scales, caches, strict=True):
            a, mlp, pre, post = layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            x, norm = (pre(h), None) if stats is None else (h, _folded(stats, pre))
            q, k, v = (t.view(h.shape[0], 1, -1) for t in self._stacked_qkv(a, x, norm))  # [B, 1, heads * D]
            q = self._rotate(q, cos, sin, getattr(a, "q_norm", None))
            k = self._rotate(k, cos, sin, getattr(a, "k_norm", None))
            attended = self._attend(q, k, v, positions, mask, cache, scale).view(h.shape[0], -1)
            h, stats = epilogue.linear(attended, a.o_proj.weight.t(), a.o_proj.bias, self.tickets, residual=h,
                                       **options)
            gate, up = self._gate_up(mlp)
            f, _ = epilogue.linear(h, gate, None, self.tickets, up=up, norm=_folded(stats, post), **options)
            h, stats = epilogue.linear(f, mlp.down_proj.weight.t(), mlp.down_proj.bias, self.tickets, residual=h,
                                       **options)
        return h, stats

    def _stacked_qkv(self, a: nn.Module, x: torch.Tensor, norm: skinny.Norm | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """_qkv(a, norm(x)) for rows x [B, hidden] in one skinny.py launch: q_proj's, k_proj's and v_proj's weights
        side by side (Phi-3's qkv_proj already is), each one's bias added after the sum, as _project adds it."""
        projections = (a.qkv_proj,) if self.kind == "phi3" else (a.q_proj, a.k_proj, a.v_proj)
        weights = [p.weight.t() for p in projections]  # [hidden, width] views of nn.Linear's own
        parts = skinny.partials(x, weights[0], norm=norm, stacked=tuple(weights[1:]), **self._skinny_options())
        y = parts.sum(0).to(x.dtype)
        widths = [self.n_head * self.head_dim] + [self.n_kv_head * self.head_dim] * 2
        biases = [p.bias for p in projections]
        if len(biases) == 1:
            biases = [None] * 3 if biases[0] is None else biases[0].split(widths)
        return tuple(part if bias is None else part + bias
                     for part, bias in zip(y.split(widths, dim=-1), biases, strict=True))

    def _gate_up(self, mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate's and up's weights [hidden, intermediate], views of the model's own: Phi-3's gate_up_proj in
        halves, gate first, as Phi3MLP splits its output."""
        if self.kind == "phi3":
            return mlp.gate_up_proj.weight.t().chunk(2, dim=1)
        return mlp.gate_proj.weight.t(), mlp.up_proj.weight.t()

    def _partials(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """skinny.py's fp32 partial sums [S, rows, out] of proj(x) without its bias, or None where the module itself
        runs (not CUDA, rows outside MIN_ROWS..skinny_max_rows)."""
        rows = x.reshape(-1, x.shape[-1])
        if not skinny.available(rows, self.skinny_max_rows, self.skinny_min_rows):
            return None
        # GPT-2's Conv1D keeps its weight [in, out], nn.Linear [out, in]: a view, [in, out] either way
        return skinny.partials(rows, proj.weight if self.kind == "gpt2" else proj.weight.t(), **self._skinny_options())

    def _skinny_options(self) -> dict[str, object]:
        """How skinny.py's and epilogue.py's GEMMs run here: PDL, the slab cap, fp32's products."""
        return {"pdl": self.pdl, "max_splits": self.skinny_max_splits, "fp32": self.skinny_fp32}

    def _project(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """proj(x) for GPT-2's Conv1D or nn.Linear, same weights."""
        parts = self._partials(proj, x)
        if parts is None:
            return proj(x)
        y = parts.sum(0).to(x.dtype)
        y = y if proj.bias is None else y + proj.bias
        return y.view(*x.shape[:-1], -1)

    def _attend_qkv(self, c_attn: nn.Module, x: torch.Tensor, positions: torch.Tensor,
                    cache: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
        """_attend(*_project(c_attn, x).chunk(3)) for one GPT-2 decode step, the projection's sum, bias, K/V write
        and attention in one kernel: skinny.py's partial sums go in as they are, cuBLAS's mm as one partial sum (the
        kernel adds the bias), and at one row c_attn's own output, its bias in."""
        parts, bias = self._partials(c_attn, x), c_attn.bias
        rows = x.reshape(-1, x.shape[-1])
        if parts is None and rows.shape[0] == 1:  # c_attn's own addmm, the bias in: cuBLAS's GEMV
            parts, bias = c_attn(x).view(1, 1, -1), None
        elif parts is None:  # mm, the kernel adds the bias: at 32 rows cuBLAS picks faster kernels for this than
            # for c_attn's addmm (96 steps 68.4 -> 64.2 ms on an H200); at one row the mm was 7% slower than the
            # unfused step (docs/history/2026-11-lean-step.md, "ab0d293, 919dea0, f6234cf")
            parts = torch.mm(rows, c_attn.weight).view(1, rows.shape[0], -1)
        out = flash_decode.decode_attention_qkv(parts, bias, *cache, positions, scale, self.pdl)  # [B, heads, 1, D]
        return out.transpose(1, 2).reshape(x.shape[0], 1, -1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)  # [B, heads, T, head_dim]

    def _qkv(self, a: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of a Llama-family attention: three projections, or Phi-3's one qkv_proj split as it splits it."""
        if self.kind != "phi3":
            return self._project(a.q_proj, x), self._project(a.k_proj, x), self._project(a.v_proj, x)
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return self._project(a.qkv_proj, x).split([q_width, kv_width, kv_width], dim=-1)

    def _gated(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The MLP's act(gate) * up, before down_proj: Phi-3's one gate_up_proj split in halves, as Phi3MLP does."""
        if self.kind != "phi3":
            return mlp.act_fn(self._project(mlp.gate_proj, x)) * self._project(mlp.up_proj, x)
        gate, up = self._project(mlp.gate_up_proj, x).chunk(2, dim=-1)
        return up * mlp.activation_fn(gate)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm: nn.Module | None = None
                ) -> torch.Tensor:
        """RoPE on [B, T, heads * head_dim] -> [B, heads, T, head_dim], after the per-head norm if any; with partial
        rotary (cos narrower than head_dim) only the first dims rotate and the rest pass, as Phi-3 does."""
        b, t, _ = x.shape
        x = x.view(b, t, -1, self.head_dim)
        x = (x if norm is None else norm(x)).transpose(1, 2)  # [B, heads, T, head_dim]
        rot = cos.shape[-1]
        x, rest = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # Llama's rotate_half
        x = x * cos[:, None] + rotated * sin[:, None]
        return x if rest.shape[-1] == 0 else torch.cat((x, rest), dim=-1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
        q, k, v = (x if x.dim() == 4 else self._heads(x) for x in (q, k, v))
        k_cache, v_cache = cache
        k_cache[:, :, positions] = k  # in place: the cache's address is what a CUDA graph replays
        v_cache[:, :, positions] = v
        b, _, t, _ = q.shape
        if t == 1 and flash_decode.available(q):
            out = flash_decode.decode_attention(q, k_cache, v_cache, positions, scale, self.pdl)
        elif t == 1:
            out = self._decode_attention(q, k_cache, v_cache, mask, scale)
        else:  # the prefill: one call per generation, any kernel will do
            out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale,
                                                 enable_gqa=self.n_kv_head != self.n_head)
        return out.transpose(1, 2).reshape(b, t, -1)

    def _decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          mask: torch.Tensor, scale: float) -> torch.Tensor:
        """One query per row as plain reductions, which inductor fuses into a few kernels that read the cache
        once. The fused SDPA kernels tile queries by 64, so a single query wastes most of each tile: measured
        16 us per layer at b=32 on an H200 (fp32 memory-efficient kernel), for ~10 MB of K/V."""
        b, heads, _, d = q.shape
        q = q.view(b, self.n_kv_head, heads // self.n_kv_head, 1, d).float()  # [B, kv, group, 1, D]
        scores = (q * k_cache[:, :, None].float()).sum(-1) * scale  # [B, kv, group, L]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # fp32, as the fused kernels accumulate
        out = (probs[..., None] * v_cache[:, :, None].float()).sum(-2)  # [B, kv, group, D]
        return out.view(b, heads, 1, d).to(k_cache.dtype)


def _folded(stats: torch.Tensor, norm: nn.Module) -> skinny.Norm:
    """A norm module folded into the next kernel's prologue, its input's statistics in stats: GPT-2's LayerNorm, or
    the Llama family's RMSNorm (LlamaRMSNorm's arithmetic, its variance_epsilon, no bias)."""
    if isinstance(norm, nn.LayerNorm):
        return skinny.Norm(stats, norm.weight, norm.bias, norm.eps)
    return skinny.Norm(stats, norm.weight, None, norm.variance_epsilon, rms=True)
