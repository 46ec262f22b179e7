"""The Linformer signal model and its adapter: captured P, F, M = P F, true gradients of M, the
explainers on it (magnitude shares for rollout), and relevance over time."""

import pytest
import torch

from harness.explain import rollout, rollout_grad, tibav
from harness.explain.signal import (
    SIGNAL_EXPLAINERS,
    explain_signal,
    mixing_matrices,
    mixing_shares,
    relevance_over_time,
)
from harness.models.signal import LinformerAttention, SignalTransformer

L, C, PATCH, K = 64, 3, 8, 4
N = 1 + L // PATCH  # 9 tokens


def tiny(num_classes: int = 3, **overrides) -> SignalTransformer:
    kwargs = dict(
        signal_length=L,
        channels=C,
        patch_length=PATCH,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        proj_dim=K,
        dropout=0.0,
    )
    return SignalTransformer(num_classes, **(kwargs | overrides)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread avoids spin-waiting on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny()


@pytest.fixture(scope="module")
def signals():
    return torch.randn(2, L, C, generator=torch.Generator().manual_seed(1))


def test_shapes_and_captured_tensors(model, signals):
    out = model(signals, capture=True)
    maps = out.attention
    assert out.logits.shape == (2, 3)
    assert out.features.shape == (2, N, 16)
    assert [p.shape for p in maps.probabilities] == [(2, 2, N, K)] * 2
    assert [f.shape for f in maps.projections] == [(K, N)] * 2
    assert [m.shape for m in mixing_matrices(maps)] == [(2, 2, N, N)] * 2
    for p, f, m in zip(maps.probabilities, maps.projections, maps.mixing):
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, N))  # rows of P sum to 1
        torch.testing.assert_close(m, p @ f)  # M = P F
        assert m.requires_grad and p.requires_grad
    for block, f in zip(model.blocks, maps.projections):
        assert f is block.attn.F  # the parameter itself, per layer
    torch.testing.assert_close(out.logits, model(signals).logits)  # capturing changes nothing


def test_explicit_mixing_is_exactly_linformer_attention():
    """out = (P F) V equals the usual Linformer P (F V) (float64, to rounding)."""
    torch.manual_seed(2)
    attn = LinformerAttention(16, 2, N, K).double()
    x = torch.randn(3, N, 16, dtype=torch.float64)
    out, p, m = attn(x)
    q, k, v = attn.qkv(x).reshape(3, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
    keys = torch.einsum("kn,bhnd->bhkd", attn.E, k)
    values = torch.einsum("kn,bhnd->bhkd", attn.F, v)
    p_ref = torch.softmax(q @ keys.transpose(-1, -2) / 8**0.5, -1)  # [B, H, N, k]
    ref = attn.proj((p_ref @ values).transpose(1, 2).reshape(3, N, 16))
    torch.testing.assert_close(p, p_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, p_ref @ attn.F, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_key_value_sharing_and_full_rank_identity_projection():
    shared = tiny(share_kv=True)
    assert shared.blocks[0].attn.F is None
    assert shared.blocks[0].attn.value_projection is shared.blocks[0].attn.E
    # k = N with E = F = I is ordinary softmax attention: M = P, and its shares are M itself.
    full = tiny(proj_dim=N, share_kv=True)
    with torch.no_grad():
        for block in full.blocks:
            block.attn.E.copy_(torch.eye(N))
    maps = full(torch.randn(2, L, C), capture=True).attention
    for p, m in zip(maps.probabilities, maps.mixing):
        torch.testing.assert_close(m, p)
        torch.testing.assert_close(mixing_shares(m), m)


def test_gradient_of_mixing_is_true_gradient_by_finite_differences():
    torch.manual_seed(3)
    model = tiny().double()
    x = torch.randn(1, L, C, dtype=torch.float64)
    out = model(x, capture=True)
    grads = out.attention.gradients(out.logits[0, 1])
    for dp, dm, f in zip(grads.probabilities, grads.mixing, grads.projections):
        torch.testing.assert_close(dp, dm @ f.T)  # P acts only through M
    layer, head, i, j, eps = 0, 1, 0, 3, 1e-6
    attn = model.blocks[layer].attn
    d = attn.head_dim

    def score(delta: float) -> float:
        """logit 1 with M[layer][0, head, i, j] += delta (its effect: delta * v_j in row i)."""

        def hook(module, args, output):
            out_, p, m = output
            v = module.qkv(args[0]).reshape(1, N, 3, 2, d)[0, j, 2, head]  # [d]
            bump = torch.zeros_like(out_)
            bump[0, i] = delta * (module.proj.weight[:, head * d : (head + 1) * d] @ v)
            return out_ + bump, p, m

        handle = attn.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return float(model(x).logits[0, 1])
        finally:
            handle.remove()

    numeric = (score(eps) - score(-eps)) / (2 * eps)
    analytic = float(grads.mixing[layer][0, head, i, j])
    assert abs(analytic) > 1e-6
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", SIGNAL_EXPLAINERS)
def test_every_explainer_gives_finite_token_relevance(model, signals, name):
    params = {"k": 1.0} if name in ("rollout_fem", "fem") else {}
    exp = explain_signal(model, signals, name, generator=torch.Generator().manual_seed(0), **params)
    assert exp.relevance.shape == (2, N - 1)
    assert bool(torch.isfinite(exp.relevance).all())
    assert exp.logits.shape == (2, 3) and exp.target.shape == (2,)
    assert not exp.relevance.requires_grad


def test_gradient_explainers_take_signed_mixing_and_its_gradient(model, signals):
    target = torch.tensor([0, 2])
    out = model(signals, capture=True)
    mixing = [m.detach() for m in out.attention.mixing]
    grads = out.attention.gradients(out.logits.gather(1, target[:, None]).sum()).mixing
    for name, fn in (("rollout_grad", rollout_grad), ("tibav", tibav)):
        exp = explain_signal(model, signals, name, target=target)
        torch.testing.assert_close(exp.relevance, fn(mixing, grads))
    exp = explain_signal(model, signals, "rollout")
    torch.testing.assert_close(exp.relevance, rollout([mixing_shares(m) for m in mixing]))


def test_mixing_shares_of_signed_rows():
    m = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    s = mixing_shares(m)
    torch.testing.assert_close(s[0], torch.tensor([2 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(s[1], torch.zeros(3))  # no mixing: the residual alone
    torch.testing.assert_close(s[2], m[2])  # row-stochastic rows are kept


def test_planted_token_is_ranked_first_by_rollout():
    """q = k = 0 makes P uniform, so every row of M is mean_k F[k] = 2 e_j - e_m: all tokens read
    token j (weight 2) and token m (weight -1). Rollout on the magnitude shares (2/3, 1/3) gives
    exactly 1/2 for j and 1/4 for m (and 0 elsewhere); a signed reading would give m < 0."""
    torch.manual_seed(4)
    model = tiny()
    j, m = 5, 2
    row = torch.zeros(N)
    row[j], row[m] = 2.0, -1.0
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:32].zero_()
            block.attn.qkv.bias[:32].zero_()
            block.attn.F.copy_(row.expand(K, N))
    x = torch.randn(2, L, C)
    expected = torch.zeros(2, N - 1)
    expected[:, j - 1], expected[:, m - 1] = 0.5, 0.25
    torch.testing.assert_close(explain_signal(model, x, "rollout").relevance, expected)
    fem_map = explain_signal(model, x, "rollout_fem", k=1.0).relevance
    assert fem_map.argmax(-1).tolist() == [j - 1, j - 1]
    weights = relevance_over_time(expected, L)
    assert weights.argmax(-1).tolist() == [(j - 1) * PATCH + PATCH // 2 - 1] * 2  # token j
    assert bool((weights[:, (j - 1) * PATCH + 3 : (j - 1) * PATCH + 5] == 1).all())


def test_relevance_over_time():
    r = torch.tensor([[0.0, 1.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    w = relevance_over_time(r, 16)
    assert w.shape == (2, 16)
    assert float(w.min()) >= 0 and float(w.max()) == 1
    assert int(w[0].argmax()) == 9 and float(w[0, 9]) == 1  # nearest sample to token 2's centre
    assert float(w[0, :2].max()) == 0 and float(w[0, -2:].max()) == 0  # ends: 0 and relu(-2)
    torch.testing.assert_close(w[1], torch.ones(16))  # no information -> keep the signal
    with pytest.raises(ValueError, match=r"relevance must be \[B, N-1\]"):
        relevance_over_time(torch.ones(4), 16)


def test_bad_input_shape_and_bad_config_are_rejected(model):
    with pytest.raises(ValueError, match=r"signals must be \[B, L, C\] = \[B, 64, 3\]"):
        model(torch.randn(1, 48, 3))
    with pytest.raises(ValueError, match=r"got \[2, 64\]"):
        model(torch.randn(2, 64))
    with pytest.raises(ValueError, match="multiple of patch_length"):
        tiny(signal_length=60)
    with pytest.raises(ValueError, match="unknown explainer 'nope'"):
        explain_signal(model, torch.randn(1, L, C), "nope")
