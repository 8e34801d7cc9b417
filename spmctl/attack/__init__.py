"""`spmctl attack`: adversarial-prompt attacks on erased models, through facilitated transport.

Three methods, each in its own module and all sharing the pieces here:
- `unlearndiffatk`: a few prompt tokens optimised against the erased model's own denoising loss on
  an image of the concept;
- `p4d`: a prompt optimised so the erased model's noise prediction matches the unerased one's
  (P4D-N: new tokens only; P4D-K: a token inserted before every K words of the prompt);
- `ring-a-bell`: a genetic search for a prompt whose text embedding is near the prompt's own plus
  η times a concept vector (model-agnostic: no UNet in the loop).

The erased model is the base model with the membranes of `spmctl sample` attached; their gates
come from facilitated transport of the prompt being tried, exactly as `spmctl sample` sets them.
"""

METHODS = ("unlearndiffatk", "p4d", "ring-a-bell")
