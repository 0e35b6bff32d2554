"""StyleGAN2 losses: non-saturating logistic loss, lazy R1 and path-length regularisation, style mixing.

Phases (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", sec. 2.2/3.2
and appendix B; the StyleGAN2-ADA release uses the same):

    Gmain  softplus(-D(G(z)))                          generator, every minibatch
    Greg   pl_weight * (|J_w^T y| - a)^2               path length, every G_reg_interval minibatches,
                                                        on batch // pl_batch_shrink samples; `a` is a
                                                        running mean of the lengths (decay pl_decay)
    Dmain  softplus(D(G(z))) + softplus(-D(x))         discriminator, every minibatch
    Dreg   gamma/2 * |grad_x D(x)|^2                   R1, every D_reg_interval minibatches

`gain` multiplies every loss (the training loop passes the phase interval, so lazily applied
regularisers keep their expected weight). With probability `style_mixing_prob`, the ws of a sample
switch at a random layer to the ws of a second z (style-mixing regularisation). Images go through
`augment_pipe` (ADA) before every D evaluation, real and generated alike.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["StyleGAN2Loss", "PHASES"]

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


def _zero_fill_grads(module: torch.nn.Module) -> None:
    """A zero .grad for every trainable parameter that the backward pass did not reach."""
    for p in module.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


class StyleGAN2Loss:
    pl_zero_term = False
    dmain_g_no_grad = True

    def __init__(self, G, D, *,
                 augment_pipe=None,            # callable applied to images before D (ADA), or None
                 style_mixing_prob=0.9,        # probability of mixing two latents in a sample
                 r1_gamma=10,                  # R1 weight gamma
                 pl_batch_shrink=2,            # the PL batch is batch // pl_batch_shrink
                 pl_decay=0.01,                # decay of the running mean of path lengths
                 pl_weight=2,                  # PL weight
                 report: Callable[[str, torch.Tensor], None] | None = None,  # stats sink (name, values)
                 real_logits_hook: Callable[[torch.Tensor], None] | None = None,  # gets D(real) (ADA)
                 ):
        if not 0 <= style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob!r}")
        if r1_gamma < 0 or pl_weight < 0:
            raise ValueError(f"r1_gamma and pl_weight must be >= 0, got {r1_gamma!r}, {pl_weight!r}")
        if int(pl_batch_shrink) != pl_batch_shrink or pl_batch_shrink < 1:
            raise ValueError(f"pl_batch_shrink must be a positive integer, got {pl_batch_shrink!r}")
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = float(style_mixing_prob)
        self.r1_gamma = float(r1_gamma)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_weight = float(pl_weight)
        self.report = report or (lambda name, value: None)
        self.real_logits_hook = real_logits_hook
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)  # running mean of path lengths (training state)
        # True: the next path-length phase sets pl_mean to the lengths it measures instead of moving
        # it 1% of the way from 0. For a generator that is already trained (fine-tuning), whose
        # lengths are far from 0, the official start at 0 makes the first few hundred PL steps push
        # every sample's lengths toward 0 (456 kimg synthfaces64, 64 samples: mean length 0.20, penalty
        # 0.047 at pl_mean 0 against 0.007 around the mean). From scratch the lengths start near 0,
        # so runs from random weights keep the official behaviour (False).
        self.pl_mean_from_first = False

    # --------------------------------------------------------------------------------------------

    def run_G(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
            mix = torch.rand([], device=ws.device) < self.style_mixing_prob
            cutoff = int(torch.where(mix, cutoff, torch.full_like(cutoff, num_ws)))
            if cutoff < num_ws:
                ws2 = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        img = self.G.synthesis(ws)
        return img, ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    # --------------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor,
                             gen_z: torch.Tensor, gen_c: torch.Tensor, *, gain: float = 1) -> None:
        """Backpropagate this phase's losses for one round (gradients add up in .grad)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0

        if do_Gmain:  # G: make D call the generated images real
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            self.report("Loss/scores/fake", gen_logits)
            self.report("Loss/signs/fake", gen_logits.sign())
            loss_Gmain = F.softplus(-gen_logits)
            self.report("Loss/G/loss", loss_Gmain)
            loss_Gmain.mean().mul(gain).backward()

        if do_Gpl:  # path-length regularisation
            batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:batch], gen_c[:batch])
            pl_noise = torch.randn_like(gen_img) / math.sqrt(gen_img.shape[2] * gen_img.shape[3])
            pl_grads, = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                            create_graph=True, only_inputs=True)
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            if self.pl_mean_from_first:
                self.pl_mean.copy_(pl_lengths.mean().detach())
                self.pl_mean_from_first = False
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            self.report("Loss/pl_penalty", pl_penalty)
            loss_Gpl = pl_penalty * self.pl_weight
            self.report("Loss/G/reg", loss_Gpl)
            if self.pl_zero_term:
                # The official way to give every synthesis parameter a gradient (= 0 where the
                # penalty does not reach it), so that all processes all-reduce the same set.
                (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()
            else:
                loss_Gpl.mean().mul(gain).backward()
                _zero_fill_grads(self.G)

        loss_Dgen = None
        if do_Dmain:  # D: call the generated images fake
            with (torch.no_grad() if self.dmain_g_no_grad else contextlib.nullcontext()):
                gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img.detach(), gen_c)
            self.report("Loss/scores/fake", gen_logits)
            self.report("Loss/signs/fake", gen_logits.sign())
            loss_Dgen = F.softplus(gen_logits)
            loss_Dgen.mean().mul(gain).backward()

        if do_Dmain or do_Dr1:  # D: call the real images real, and/or R1
            real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real_img_tmp, real_c)
            self.report("Loss/scores/real", real_logits)
            self.report("Loss/signs/real", real_logits.sign())
            if self.real_logits_hook is not None:
                self.real_logits_hook(real_logits.detach())
            loss = real_logits * 0
            if do_Dmain:
                loss_Dreal = F.softplus(-real_logits)
                loss = loss + loss_Dreal
                self.report("Loss/D/loss", loss_Dgen + loss_Dreal)
            if do_Dr1:
                r1_grads, = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                                create_graph=True, only_inputs=True)
                r1_penalty = r1_grads.square().sum([1, 2, 3])
                self.report("Loss/r1_penalty", r1_penalty)
                loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                self.report("Loss/D/reg", loss_Dr1)
                loss = loss + loss_Dr1
            loss.mean().mul(gain).backward()
