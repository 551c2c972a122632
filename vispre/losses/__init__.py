"""Losses: pure functions (paper, tensor shapes) and the small modules objectives take as their ``loss``.

A loss module holds its hyper-parameters and returns its own log terms (a dict with the total under
``"loss"``). In YAML: ``loss: {class_path: vispre.losses.NTXentLoss, init_args: {temperature: 0.2}}``.
"""

from vispre.losses.amcl import (AMCLContrastiveLoss, AMCLInfoNCELoss, AMCLNTXentLoss, paper_contrastive_loss,
                                paper_negative_term, paper_positive_term, stable_contrastive_loss)
from vispre.losses.amcl_barlow_twins import AMCLBarlowTwinsLoss, paper_barlow_twins_loss, stable_barlow_twins_loss
from vispre.losses.amcl_temperature import AMCLForm, AMCLHead, PairTemperature, head_terms, omega, temperature_stats
from vispre.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss, batch_standardize, cross_correlation
from vispre.losses.dino import dino_loss, dino_teacher_probs, ibot_patch_loss, sinkhorn_knopp, update_center
from vispre.losses.gather import distributed_ready, gather_with_grad, world_rank
from vispre.losses.info_nce import (ContrastivePairs, InfoNCELoss, NTXentLoss, contrastive_loss, info_nce_loss,
                                    moco_pairs, nt_xent_loss, pair_logits, simclr_pairs)
from vispre.losses.koleo import koleo_loss
from vispre.losses.masked_mse import PatchStats, denormalize_patches, masked_mse_loss, normalize_patches, patch_stats

__all__ = ["AMCLBarlowTwinsLoss", "AMCLContrastiveLoss", "AMCLForm", "AMCLHead", "AMCLInfoNCELoss", "AMCLNTXentLoss",
           "BarlowTwinsLoss", "ContrastivePairs", "InfoNCELoss", "NTXentLoss",
           "PairTemperature", "PatchStats", "paper_barlow_twins_loss", "paper_contrastive_loss", "paper_negative_term",
           "paper_positive_term", "stable_barlow_twins_loss", "stable_contrastive_loss", "temperature_stats",
           "barlow_twins_loss",
           "batch_standardize", "contrastive_loss", "cross_correlation", "denormalize_patches", "dino_loss",
           "dino_teacher_probs", "distributed_ready", "gather_with_grad", "head_terms", "ibot_patch_loss",
           "info_nce_loss", "koleo_loss", "masked_mse_loss", "moco_pairs", "normalize_patches", "nt_xent_loss",
           "omega", "pair_logits", "patch_stats", "simclr_pairs", "sinkhorn_knopp", "update_center", "world_rank"]
