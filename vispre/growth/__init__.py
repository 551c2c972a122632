"""Model growth: pure operators returning a NEW module (grow_depth, grow_width, grow_mlp, grow_heads, shrink),
whole-objective growth, optimizer-state mapping and the GrowthCallback. Math: shared/reference/growth.md."""

from vispre.growth.callback import GrowthCallback
from vispre.growth.depth import grow_depth
from vispre.growth.maps import GrowthResult, ParamMap
from vispre.growth.modules import GrowthSpec, grow_masked_vit, grow_objective, widen_input_linear
from vispre.growth.shrink import ShrinkPlan, ShrinkResult, shrink
from vispre.growth.width import grow_heads, grow_mlp, grow_width

__all__ = ["GrowthCallback", "GrowthResult", "GrowthSpec", "ParamMap", "ShrinkPlan", "ShrinkResult", "grow_depth",
           "grow_heads", "grow_masked_vit", "grow_mlp", "grow_objective", "grow_width", "shrink", "widen_input_linear"]
