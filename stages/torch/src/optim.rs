//! AdamW (PyTorch's algorithm, decoupled weight decay on every parameter, as
//! `torch.optim.AdamW` does by default), written here rather than taken from libtorch's C++
//! optimiser so that its state (moments, step) can be checkpointed and a resumed run ends
//! bit-identical to an uninterrupted one; learning-rate schedules; gradient clipping and a
//! dynamic loss scaler for fp16 autocast on CUDA.

use std::collections::HashMap;

use flow_stages::model::Schedule;
use tch::{nn, Tensor};

use crate::nets::named;
use crate::util::Res;

pub struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Gradients accumulated since the last step (None: no gradient yet, as PyTorch's
    /// `zero_grad(set_to_none=True)`: no memset, and the first backward's gradient is kept
    /// as is rather than added to zeros).
    acc: Vec<Option<Tensor>>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimiser steps taken (bias correction).
    pub step: i64,
    wd: f64,
    b1: f64,
    b2: f64,
    eps: f64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> AdamW {
        let (names, params): (Vec<String>, Vec<Tensor>) =
            named(vs).into_iter().filter(|(_, t)| t.requires_grad()).unzip();
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        let acc = (0..params.len()).map(|_| None).collect();
        AdamW {
            names,
            params,
            acc,
            m,
            v,
            step: 0,
            wd: weight_decay,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
        }
    }

    /// Forgets the accumulated gradients.
    pub fn zero_grad(&mut self) {
        self.acc.iter_mut().for_each(|g| *g = None);
    }

    /// Backpropagates the scalar `loss` and adds the parameters' gradients to the
    /// accumulated ones (`torch.autograd.grad`, so parameters' `.grad` stay unused).
    pub fn backward(&mut self, loss: &Tensor) {
        let grads = Tensor::run_backward(&[loss], &self.params, false, false);
        tch::no_grad(|| {
            for (acc, g) in self.acc.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                match acc {
                    None => *acc = Some(g),
                    Some(a) => *a += g,
                }
            }
        });
    }

    fn grads(&self) -> impl Iterator<Item = &Tensor> + '_ {
        self.acc.iter().flatten()
    }

    /// L2 norm of all gradients together.
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self.grads().map(|g| g.norm()).collect();
            if norms.is_empty() {
                return 0.0;
            }
            Tensor::stack(&norms, 0).norm().double_value(&[])
        })
    }

    pub fn scale_grads(&mut self, f: f64) {
        tch::no_grad(|| {
            for g in self.acc.iter_mut().flatten() {
                let _ = g.g_mul_scalar_(f);
            }
        });
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.b1.powf(t);
        let bc2 = 1.0 - self.b2.powf(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let Some(g) = self.acc[i].take() else {
                    continue;
                };
                let p = &mut self.params[i];
                if self.wd != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.wd);
                }
                let _ = self.m[i].lerp_(&g, 1.0 - self.b1);
                let _ = self.v[i].lerp_(&(&g * &g), 1.0 - self.b2);
                // p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
                let mut denom = self.v[i].sqrt();
                let _ = denom.g_div_scalar_(bc2_sqrt);
                let _ = denom.g_add_scalar_(self.eps);
                let _ = denom.g_mul_scalar_(-1.0 / step_size);
                let _ = p.addcdiv_(&self.m[i], &denom);
            }
        });
    }

    /// Moments as named CPU tensors (`m.<param>`, `v.<param>`), for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].to_device(tch::Device::Cpu).contiguous()));
            out.push((format!("v.{n}"), self.v[i].to_device(tch::Device::Cpu).contiguous()));
        }
        out
    }

    pub fn load_state(&mut self, src: &HashMap<String, Tensor>, step: i64) -> Res<()> {
        tch::no_grad(|| {
            for (i, n) in self.names.iter().enumerate() {
                for (which, buf) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                    let t = src
                        .get(&format!("{which}.{n}"))
                        .ok_or_else(|| format!("optimizer state lacks {which}.{n}"))?;
                    if t.size() != buf.size() {
                        return Err(format!(
                            "optimizer state {which}.{n} has shape {:?}, expected {:?}",
                            t.size(),
                            buf.size()
                        ));
                    }
                    buf.copy_(&t.to_device(buf.device()));
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Learning rate of optimiser step `step` (0-based) of `total`.
pub fn lr_at(schedule: Schedule, base: f64, step: i64, total: i64, steps_per_epoch: i64) -> f64 {
    let total = total.max(1) as f64;
    let s = step as f64;
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine { warmup_epochs } => {
            let warm = (warmup_epochs.max(0.0) * steps_per_epoch as f64).round().min(total);
            if s < warm {
                base * (s + 1.0) / warm
            } else {
                let span = (total - warm).max(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * ((s - warm) / span).min(1.0)).cos())
            }
        }
        Schedule::OneCycle { pct_start } => {
            // torch.optim.lr_scheduler.OneCycleLR with cosine annealing, div_factor 25,
            // final_div_factor 1e4.
            let initial = base / 25.0;
            let min = initial / 1e4;
            let up = (pct_start.clamp(0.0, 1.0) * total - 1.0).max(0.0);
            let down_end = total - 1.0;
            let cos =
                |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
            if s <= up {
                if up == 0.0 {
                    base
                } else {
                    cos(initial, base, s / up)
                }
            } else {
                cos(base, min, ((s - up) / (down_end - up).max(1.0)).min(1.0))
            }
        }
    }
}

/// Dynamic loss scaling for fp16 autocast (as torch.cuda.amp.GradScaler: start 2^16, halve
/// on overflow and skip the step, double after 2000 clean steps).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Scaler {
    pub scale: f64,
    pub good: u32,
}

impl Default for Scaler {
    fn default() -> Self {
        Scaler {
            scale: 65536.0,
            good: 0,
        }
    }
}

impl Scaler {
    /// After an unscaled gradient norm: whether to take the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good += 1;
            if self.good >= 2000 {
                self.scale *= 2.0;
                self.good = 0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = Schedule::Cosine { warmup_epochs: 1.0 };
        assert_eq!(lr_at(c, 1.0, 0, 100, 10), 0.1);
        assert_eq!(lr_at(c, 1.0, 9, 100, 10), 1.0);
        assert!((lr_at(c, 1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!(lr_at(c, 1.0, 99, 100, 10) < 0.001);
        assert_eq!(lr_at(Schedule::Constant, 0.3, 50, 100, 10), 0.3);
        let o = Schedule::OneCycle { pct_start: 0.3 };
        assert!((lr_at(o, 1.0, 0, 100, 10) - 0.04).abs() < 1e-12);
        assert!((lr_at(o, 1.0, 29, 100, 10) - 1.0).abs() < 1e-12);
        assert!(lr_at(o, 1.0, 99, 100, 10) < 1e-5);
    }

    #[test]
    fn adamw_matches_the_pytorch_formula() {
        // One parameter x, loss = x^2 at x = 1: g = 2. PyTorch AdamW(lr=0.1, wd=0.01) after
        // one step: x = 1*(1-0.001) - 0.1 * (0.2/0.1) / (sqrt(0.004/0.001) + 1e-8) = 0.899
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().var("x", &[1], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, 0.01);
        let loss = (&x * &x).sum(tch::Kind::Float);
        opt.backward(&loss);
        opt.step(0.1);
        let v = x.double_value(&[0]);
        assert!((v - 0.899).abs() < 1e-6, "{v}");
    }
}
