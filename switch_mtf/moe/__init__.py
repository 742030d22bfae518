"""The Switch layer and what it is made of (Mesh TF graphs, gin at the edges).

- ``capacity``: expert capacity per group (plain Python).
- ``routing``: routers (one interface for every policy) and ``Routing``,
  the routing decision both dispatchers read.
- ``dispatch``: moving tokens to expert slots and back (einsum or gather).
- ``experts``: the experts' feed-forward networks.
- ``layers``: the Switch feed-forward layer (``SwitchFFN``) and its settings.
- ``attention``: Switch attention (experts in the attention projections).
- ``models``: layer stacks with a Switch layer every ``expert_every`` layers.
- ``layout``: checks of a mesh layout against the tensors laid out on it.
- ``accounting``: parameters, FLOPs and memory of a gin model, no graph.
- ``router_summaries``: the router's health as summaries, written and read.
"""
