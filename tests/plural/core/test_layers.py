import torch

from plural.core.layers import HybridItems


def test_unknown_items_fall_back_on_features():
    torch.manual_seed(0)
    items = HybridItems(feature_dim=4, n_items=3, out_dim=2, hidden_dim=8)
    with torch.no_grad():
        items.item_embedding.weight[:3] = 1.0
        items.item_bias.weight[:3] = 5.0
    x = torch.randn(2, 4)
    phi_new, bias_new = items(x, torch.tensor([-1, -1]))
    phi_feat, bias_feat = items(x, None)
    assert torch.equal(phi_new, phi_feat) and torch.equal(bias_new, bias_feat)
    phi_known, bias_known = items(x, torch.tensor([0, 2]))
    assert torch.allclose(phi_known, phi_feat + 1.0) and torch.allclose(bias_known, bias_feat + 5.0)
    assert items.identity_penalty().item() == (3 * 2 * 1.0 + 3 * 25.0)


def test_unknown_row_gets_no_gradient():
    items = HybridItems(feature_dim=4, n_items=3, out_dim=2, hidden_dim=8)
    phi, bias = items(torch.randn(2, 4), torch.tensor([-1, 1]))
    (phi.sum() + bias.sum()).backward()
    assert items.item_embedding.weight.grad[3].abs().sum() == 0
    assert items.item_embedding.weight.grad[1].abs().sum() > 0


def test_content_only():
    items = HybridItems(feature_dim=4, n_items=3, out_dim=2, hidden_dim=8, use_identity=False)
    phi, bias = items(torch.randn(5, 4), torch.tensor([0, 1, 2, -1, 0]))
    assert phi.shape == (5, 2) and bias.shape == (5,)
    assert items.identity_penalty().item() == 0
