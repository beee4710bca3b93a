"""Local attention at initialisation (model.local_attention, local_init.py): the heads it sets attend
to the previous and the next token from the first step, the rest of the model stays BERT's, and the
result saves and loads as a plain Hugging Face ELECTRA model."""

import torch
from transformers import ElectraForPreTraining

from electra_ray.config import Config, apply_values
from electra_ray.local_init import frequencies, local_attention_init, offsets
from electra_ray.model import build_model


def tiny(local_attention: int) -> Config:
    cfg = Config()
    apply_values(cfg, {"model": {"num_layers": 2, "hidden_size": 128, "embedding_size": 128, "num_heads": 4}})
    apply_values(cfg, {"model": {"intermediate_size": 256, "max_position_embeddings": 128}})
    apply_values(cfg, {"model": {"local_attention": local_attention, "dropout": 0.0}})
    return cfg


def attention_maps(net, ids):
    net.config._attn_implementation = "eager"  # eager returns the attention probabilities
    with torch.no_grad():
        return net(input_ids=ids, output_attentions=True).attentions


def test_local_heads_attend_to_their_neighbour_from_the_start():
    torch.manual_seed(0)
    model = build_model(tiny(1).model, 1000)
    ids = torch.randint(5, 1000, (2, 128))
    first, second = attention_maps(model.discriminator, ids)
    inner = torch.arange(4, 124)
    for head, offset in enumerate(offsets(2)):  # -1, +1
        on_target = first[:, head, inner, inner + offset].mean()
        assert on_target > 0.3, (head, float(on_target))  # uniform attention gives 1/128
        assert first[:, head, inner, inner - offset].mean() < 0.05
    assert first[:, 2:, inner, inner - 1].mean() < 0.05  # the other heads and layers: BERT's uniform start
    assert second[:, :, inner, inner - 1].mean() < 0.05

    torch.manual_seed(0)
    plain = build_model(tiny(0).model, 1000)
    assert attention_maps(plain.discriminator, ids)[0][:, :2, inner, inner - 1].mean() < 0.05


def test_the_position_table_is_shared_and_the_narrow_generator_keeps_bert_attention_unless_asked():
    torch.manual_seed(0)
    model = build_model(tiny(2).model, 1000)
    table = model.discriminator.electra.embeddings.position_embeddings.weight
    assert table is model.generator.electra.embeddings.position_embeddings.weight
    head_dim = 128 // 4
    assert torch.all(table[:, head_dim:] == 0) and table[:, :head_dim].abs().max() > 0
    torch.manual_seed(0)
    plain = build_model(tiny(0).model, 1000)
    query = model.generator.electra.encoder.layer[0].attention.self.query.weight
    assert torch.equal(query, plain.generator.electra.encoder.layer[0].attention.self.query.weight)

    local_attention_init(model.generator.electra, 2, set_positions=False, through_projection=True)
    ids = torch.randint(5, 1000, (2, 128))
    inner = torch.arange(4, 124)
    generator = attention_maps(model.generator, ids)  # ¼ width: one head a layer, the offsets in turn
    assert generator[0][:, 0, inner, inner - 1].mean() > 0.2 and generator[0][:, 0, inner, inner + 1].mean() < 0.05
    assert generator[1][:, 0, inner, inner + 1].mean() > 0.2 and generator[1][:, 0, inner, inner - 1].mean() < 0.05


def test_no_two_positions_look_alike():
    omegas = frequencies(16, 128)
    kernel = torch.cos(torch.arange(1, 128).unsqueeze(1) * omegas).mean(1)
    assert kernel.max() < 0.4  # the transformer's own frequencies: 0.88 at the next position
    assert torch.equal(omegas, frequencies(16, 128))  # seeded: every run gets the same table


def test_the_export_is_a_plain_electra_model(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny(2).model, 1000)
    model.discriminator.save_pretrained(tmp_path)
    loaded = ElectraForPreTraining.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 1000, (2, 32))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model.discriminator.eval()(input_ids=ids).logits, atol=1e-5)
