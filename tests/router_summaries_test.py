"""Router summaries: the tags written by the layer, read back by layer."""
from switch_mtf.moe import router_summaries

SCALARS = {
    "loss": 2.5,
    "encoder/block_001/layer_001/SwitchFFN/router/aux_loss": 1.0,
    "encoder/block_001/layer_001/SwitchFFN/router/fraction_dropped": 0.1,
    "encoder/block_001/layer_001/SwitchFFN/router/max_expert_load": 0.2,
    "decoder/block_001/layer_002/SwitchFFN/router/aux_loss": 1.5,
    "decoder/block_001/layer_002/SwitchFFN/router/fraction_dropped": 0.3,
}


def test_by_layer_groups_metrics_under_the_layer_scope():
  layers = router_summaries.by_layer(SCALARS)
  assert layers == {
      "encoder/block_001/layer_001/SwitchFFN": {
          "aux_loss": 1.0, "fraction_dropped": 0.1, "max_expert_load": 0.2},
      "decoder/block_001/layer_002/SwitchFFN": {
          "aux_loss": 1.5, "fraction_dropped": 0.3}}


def test_mean_over_layers_ignores_other_tags_and_missing_metrics():
  assert router_summaries.mean_over_layers(SCALARS, "aux_loss") == 1.25
  assert router_summaries.mean_over_layers(SCALARS, "max_expert_load") == 0.2
  assert router_summaries.mean_over_layers({"loss": 1.0}, "aux_loss") is None


def test_health_lines_one_per_layer_sorted_nan_for_missing():
  lines = router_summaries.health_lines(SCALARS)
  assert len(lines) == 2
  assert lines[0].startswith("  router decoder/block_001/layer_002/SwitchFFN:")
  assert "dropped 30.00%" in lines[0] and "aux 1.500" in lines[0]
  assert "expert load max nan" in lines[0]
  assert "max 0.200" in lines[1] and "dropped 10.00%" in lines[1]
