"""Per-token losses, computed only where they are needed.

Convention (used everywhere): the loss of token ``j`` is ``-log P(x_j | x_<j)``, predicted from position
``j - 1``. A *target mask* marks the tokens whose loss we want; ``prediction_mask`` shifts it to the positions
that predict them. The output projection and the fp32 log-softmax run only at those positions, so full
``[batch, seq, vocab]`` logits never exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import is_sharded
from ..core.labels import IGNORE_INDEX, clear_position_0
from ..core.threshold import kept_count, top_k_mask

# Configs with any of these set change logits after the output projection; for such models the trunk/head
# fast path is not exact and the model's own forward (with ``logits_to_keep``) is used instead.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def prediction_mask(target_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) bool: position ``j - 1`` is set when token ``j`` is a target. Position 0 is never a
    target (nothing predicts it)."""
    pred = torch.zeros_like(target_mask)
    pred[:, :-1] = target_mask[:, 1:]
    return pred


def target_tokens(input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(N,) the target tokens in row-major order, matching the rows of ``hidden[prediction_mask(target_mask)]``."""
    return input_ids[:, 1:][target_mask[:, 1:]]


def _trunk_and_head(model):
    """The transformer body and output projection of a plain causal LM, or ``None`` when the fast path is not exact
    (or not possible: an FSDP-sharded head's weight exists whole only inside the model's own forward)."""
    if is_sharded(model):
        return None
    if any(getattr(model.config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    if hasattr(model, "get_base_model"):  # a PEFT model: its adapters live inside the wrapped model's modules
        model = model.get_base_model()
    trunk, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if trunk is None or trunk is model or head is None or hasattr(head, "base_layer"):  # adapted head: not exact
        return None
    return trunk, head


def default_chunk_tokens(vocab: int, device: torch.device) -> int:
    """Positions per output-projection chunk. On CPU ~512 positions (measured: 256-1024 are within noise of each
    other; smaller ones starve the matmul, and the logits of a chunk, V x 512 x 4 bytes, are written and read
    back once); on an accelerator about 256 MB of fp32 logits."""
    budget = max(1, (1 << 26) // vocab)
    return min(512, budget) if device.type == "cpu" else budget


def head_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                chunk_tokens: int | None = None) -> torch.Tensor:
    """``-log softmax(hidden @ weight.T + bias)[targets]`` in fp32, shape (N,), without (N, V) logits.

    ``hidden``: (N, H); ``weight``: (V, H); ``targets``: (N,). Per chunk of positions the logits are computed
    transposed, (V, chunk) = ``weight @ hidden.T`` (on CPU ~1.7x the FLOP rate of ``hidden @ weight.T``, whose
    output has the long vocabulary axis innermost), cast to fp32, and reduced in place: logsumexp over the
    vocabulary (max, exp, sum; no softmax tensor) minus the target's logit. Equal to ``F.cross_entropy`` on
    fp32 logits up to float rounding (~1e-6).
    """
    n, vocab = len(targets), weight.shape[0]
    chunk = chunk_tokens or default_chunk_tokens(vocab, hidden.device)
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    cols = torch.arange(min(chunk, max(n, 1)), device=hidden.device)
    buf = None
    for i in range(0, n, chunk):
        h = hidden[i : i + chunk]  # (c, H)
        c = len(h)
        if bias is not None:
            logits = torch.addmm(bias[:, None], weight, h.T)  # (V, c)
        elif weight.dtype == torch.float32 and c == chunk:
            buf = torch.empty(vocab, chunk, dtype=torch.float32, device=hidden.device) if buf is None else buf
            logits = torch.mm(weight, h.T, out=buf)  # (V, c), reuses one buffer for every full chunk
        else:
            logits = torch.mm(weight, h.T)
        logits = logits.float()
        target_logit = logits[targets[i : i + c], cols[:c]]  # (c,)
        peak = logits.amax(0)  # (c,)
        total = logits.sub_(peak).exp_().sum(0)  # in place: the chunk's logits are not needed afterwards
        out[i : i + c] = total.log_().add_(peak).sub_(target_logit)
    return out


@torch.inference_mode()
def token_losses(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Loss of every target token, fp32, shape (N,) with N = ``target_mask[:, 1:].sum()``, row-major order.

    ``input_ids``, ``attention_mask``, ``target_mask``: (B, T). The output projection and log-softmax are applied to
    ``chunk_tokens`` positions at a time (see ``head_losses``; default ``default_chunk_tokens``).
    """
    pred = prediction_mask(target_mask)
    targets = target_tokens(input_ids, target_mask)
    parts = _trunk_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=pred).logits  # (N, V)
        return F.cross_entropy(logits.float(), targets, reduction="none")
    trunk, head = parts
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    hidden = hidden[pred]  # (N, H)
    return head_losses(hidden, head.weight, targets, getattr(head, "bias", None), chunk_tokens)


def kept_token_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Sum of the losses of tokens whose label is not ``IGNORE_INDEX``, and their count.

    Logits are computed only at positions that predict a kept token (through the model's own forward with a
    boolean ``logits_to_keep``, so DDP/FSDP wrappers and PEFT see a normal call). A batch with no kept token
    returns a zero that is still connected to the graph, so its gradient is exactly zero, never NaN.
    Shapes: (B, T) in; scalar fp32 sum and int count out.
    """
    target = clear_position_0(labels != IGNORE_INDEX)
    pred = prediction_mask(target)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=pred).logits  # (N, V)
    targets = labels[:, 1:][target[:, 1:]]
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, targets.numel()


def slm_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 ref_loss: torch.Tensor, keep_ratio: float):
    """Rho-1's Selective Language Modeling, online: sum of the current losses of the batch's top ``keep_ratio``
    response tokens by excess loss (current loss - reference loss), and the number selected.

    ``ref_loss``: (B, T) fp32, the reference model's loss of token j at [:, j] (precomputed once). Response tokens
    are those with a label. Ties go to the earlier token (row-major). Unselected tokens get exactly zero gradient.
    """
    target = clear_position_0(labels != IGNORE_INDEX)
    pred = prediction_mask(target)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=pred).logits  # (N, V)
    current = F.cross_entropy(logits.float(), labels[:, 1:][target[:, 1:]], reduction="none")  # (N,)
    excess = (current.detach() - ref_loss[:, 1:][target[:, 1:]].float()).cpu().numpy()
    keep = torch.from_numpy(top_k_mask(excess, int(kept_count(keep_ratio, len(excess))))).to(current.device)
    return (current * keep).sum(), int(keep.sum())
