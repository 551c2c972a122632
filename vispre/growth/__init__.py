"""Model growth: pure operators returning a NEW module (grow_depth, grow_width, grow_mlp, grow_heads, shrink),
whole-objective growth and regrowth, optimizer-state mapping and the GrowthCallback. Math: docs/growth.md."""

from vispre.growth.callback import GrownRecipe, GrowthCallback
from vispre.growth.depth import grow_depth
from vispre.growth.maps import BlockName, GrowthResult, ParamMap, split_block_name
from vispre.growth.modules import GrowthSpec, grow_objective, growth_steps, regrow_objective, widen_input_linear
from vispre.growth.shrink import ShrinkPlan, ShrinkResult, shrink
from vispre.growth.width import grow_heads, grow_mlp, grow_width

__all__ = ["BlockName", "GrownRecipe", "GrowthCallback", "GrowthResult", "GrowthSpec", "ParamMap", "ShrinkPlan",
           "ShrinkResult", "grow_depth", "grow_heads", "grow_mlp", "grow_objective", "grow_width", "growth_steps",
           "regrow_objective", "shrink", "split_block_name", "widen_input_linear"]
