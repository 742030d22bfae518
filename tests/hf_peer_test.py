"""The Hugging Face peer (issue 14): Hugging Face's model started from our
step-0 checkpoint and trained on the batches ours consumed, with Mesh TF's
Adafactor and loss in torch, follows our training step for step.

If the weight mapping, the packed-sequence masks, the loss or the optimizer
port were wrong, the losses after the first update would differ; the
routing here is the same on both sides (each sequence one group with a
fixed capacity, argmax: no random numbers)."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from switch_mtf import checkpoint_io
from switch_mtf import config
from switch_mtf.train import evaluation
from switch_mtf.hf import conversion as hf_conversion
from switch_mtf.hf import peer as hf_peer
from switch_mtf.train import run
from switch_mtf.tasks import embedded

LENGTHS = {"inputs": 64, "targets": 16}
CAPACITY = {"encoder": 10, "decoder": 4}
STEPS = 3


@pytest.fixture(scope="module")
def task():
  tf.disable_eager_execution()
  return embedded.register()


@pytest.mark.parametrize("model", ["models/small/dense",
                                   "models/small/switch_8"])
def test_peer_follows_our_training_step_for_step(task, model, tmp_path):
  params = ["utils.run.sequence_length = %r" % LENGTHS,
            "SwitchRouter.policy_train = 'argmax'",
            "SwitchFFN.route_per_sequence = True",
            "encoder/SwitchFFN.expert_capacity = %d" % CAPACITY["encoder"],
            "decoder/SwitchFFN.expert_capacity = %d" % CAPACITY["decoder"]]
  config.parse([model, "layouts/cpu_1"], params)
  model_dir = str(tmp_path)
  ours = run.make_model(model_dir, 8, LENGTHS, save_checkpoints_steps=STEPS)
  progress = run.train(ours, task.name, STEPS, every=1, out=lambda l: None)
  our_losses = [h["loss"] for h in progress.history]

  checkpoint = model_dir + "/model.ckpt-0"
  arch = hf_conversion.architecture_from_checkpoint(
      checkpoint_io.CheckpointReader(checkpoint).shapes)
  peer = hf_peer.Peer(checkpoint, arch, hf_peer.PeerSettings(
      expert_capacity=CAPACITY, jitter="none"))
  batches = hf_peer.export_batches(task.name, LENGTHS, 8, STEPS, seed=0)
  their_losses = [peer.train_step({k: v[s] for k, v in batches.items()})[0]
                  for s in range(STEPS)]
  np.testing.assert_allclose(their_losses, our_losses, rtol=2e-4)
  assert our_losses[-1] < our_losses[0]

  examples = evaluation.fixed_examples(task.name, "validation", LENGTHS)
  value, _, _ = run.neg_log_perplexity(ours, task.name)
  assert peer.neg_log_perplexity(examples) == pytest.approx(value, rel=1e-4)

  # Packed rows (several examples in one row, as training packs them):
  # each segment sees only itself, so two examples packed in one row score
  # exactly what they score in rows of their own.
  if model.endswith("dense"):
    short = [0, 1]   # their first halves, as two short examples
    cut = {"inputs": LENGTHS["inputs"] // 2, "targets": LENGTHS["targets"] // 2}
    packed = {}
    for key, length in LENGTHS.items():
      row = np.zeros(length, np.int32)
      segments = np.zeros(length, np.int32)
      at = 0
      for segment, i in enumerate(short, 1):
        tokens = examples.features[key][i][:cut[key]]
        row[at:at + len(tokens)] = tokens
        segments[at:at + len(tokens)] = segment
        at += len(tokens)
      packed[key] = row[None]
      packed[key + "_segmentation"] = segments[None]
    one_row = evaluation.Examples({k: v for k, v in packed.items()
                                   if "_" not in k})
    apart = evaluation.Examples({k: np.pad(v[short][:, :cut[k]], [
        (0, 0), (0, LENGTHS[k] - cut[k])]) for k, v in
                                 examples.features.items()})

    def total(batch_examples, extra=None):
      peer.model.eval()
      batch = dict(batch_examples.features, **(extra or {}))
      logits, _ = peer._forward(batch)  # pylint: disable=protected-access
      targets = batch["targets"]
      log_probs = logits.log_softmax(-1).detach().numpy()
      picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
      return float((picked * (targets > 0)).sum())
    assert total(one_row, {k: v for k, v in packed.items() if "_" in k}) == (
        pytest.approx(total(apart), abs=1e-3))


def test_adafactor_port_matches_transformers_where_they_coincide():
  """Where Mesh TF's and transformers' Adafactor agree (a 2-D parameter
  with both dims >= 128, constant learning rate, update clipping 1, scale
  by the parameter's RMS), the port gives transformers' updates."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ours = torch.nn.Parameter(torch.randn(160, 128) * 0.05)
  theirs = torch.nn.Parameter(ours.detach().clone())
  port = hf_peer.MeshTFAdafactor([[ours]], learning_rate=0.01)
  reference = transformers.Adafactor(
      [theirs], lr=0.01, relative_step=False, scale_parameter=True,
      warmup_init=False, clip_threshold=1.0, decay_rate=-0.8,
      eps=(1e-30, 1e-3))
  for step in range(4):
    grad = torch.randn(160, 128) * (step + 1)
    ours.grad, theirs.grad = grad.clone(), grad.clone()
    port.step()
    reference.step()
    np.testing.assert_allclose(ours.detach().numpy(),
                               theirs.detach().numpy(), rtol=1e-5,
                               atol=1e-7)
  # And a stacked group clips and scales over all its members together.
  a = torch.nn.Parameter(torch.ones(3, 4))
  b = torch.nn.Parameter(torch.ones(3, 4) * 3)
  a.grad, b.grad = torch.ones(3, 4), torch.ones(3, 4)
  hf_peer.MeshTFAdafactor([[a, b]], learning_rate=0.1).step()
  # RMS over both = sqrt(5): each moves by 0.1 * sqrt(5) (x = g/|g| = 1).
  np.testing.assert_allclose(a.detach().numpy(), 1 - 0.1 * 5 ** 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(b.detach().numpy(), 3 - 0.1 * 5 ** 0.5,
                             rtol=1e-6)
