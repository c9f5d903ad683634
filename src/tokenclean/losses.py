"""Per-token losses, computed only where they are needed.

Convention (used everywhere): the loss of token ``j`` is ``-log P(x_j | x_<j)``, predicted from position
``j - 1``. A *target mask* marks the tokens whose loss we want; ``prediction_mask`` shifts it to the positions
that predict them. The output projection and the fp32 log-softmax run only at those positions, so full
``[batch, seq, vocab]`` logits never exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tokens import IGNORE_INDEX

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
    """The transformer body and output projection of a plain causal LM, or ``None`` when the fast path is not exact."""
    if any(getattr(model.config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    trunk, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if trunk is None or trunk is model or head is None:
        return None
    return trunk, head


@torch.no_grad()
def token_losses(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Loss of every target token, fp32, shape (N,) with N = ``target_mask[:, 1:].sum()``, row-major order.

    ``input_ids``, ``attention_mask``, ``target_mask``: (B, T). The output projection and log-softmax are applied to
    ``chunk_tokens`` positions at a time (default: about 256 MB of fp32 logits per chunk).
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
    vocab = head.weight.shape[0]
    chunk = chunk_tokens or max(1, (1 << 26) // vocab)
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for i in range(0, len(targets), chunk):
        logits = head(hidden[i : i + chunk]).float()  # (chunk, V)
        out[i : i + chunk] = F.cross_entropy(logits, targets[i : i + chunk], reduction="none")
    return out


def kept_token_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Sum of the losses of tokens whose label is not ``IGNORE_INDEX``, and their count.

    Logits are computed only at positions that predict a kept token (through the model's own forward with a
    boolean ``logits_to_keep``, so DDP/FSDP wrappers and PEFT see a normal call). A batch with no kept token
    returns a zero that is still connected to the graph, so its gradient is exactly zero, never NaN.
    Shapes: (B, T) in; scalar fp32 sum and int count out.
    """
    target = labels != IGNORE_INDEX
    target[:, 0] = False
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
    from .selection import round_half_up, top_k_mask

    target = labels != IGNORE_INDEX
    target[:, 0] = False
    pred = prediction_mask(target)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=pred).logits  # (N, V)
    current = F.cross_entropy(logits.float(), labels[:, 1:][target[:, 1:]], reduction="none")  # (N,)
    excess = (current.detach() - ref_loss[:, 1:][target[:, 1:]].float()).cpu().numpy()
    keep = torch.from_numpy(top_k_mask(excess, int(round_half_up(keep_ratio * len(excess))))).to(current.device)
    return (current * keep).sum(), int(keep.sum())
