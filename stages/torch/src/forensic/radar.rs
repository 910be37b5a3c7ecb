//! RADAR (seed 003): boundary and/or frequency evidence ([`super::evidence`]), iterative
//! evidence refinement ([`Erm`]), an external classifier on the concatenated evidence, and a
//! learnable gate `final = α·reasoning + (1 − α)·external`, trained with RADAR's multi-part
//! per-sample loss ([`RadarNet::loss`]).
//!
//! Variables, under the `p` given to [`RadarNet::new`] (the backbone's are the caller's, under
//! `p / "backbone"`):
//!
//! - `badm.…` ([`BoundaryEvidence`]), only with `boundary: true`;
//! - `aadm.…` ([`FrequencyEvidence`]), only with `frequency: true`;
//! - `erm.proj.badm` / `erm.proj.aadm` (evidence_dim→evidence_dim, one per enabled source),
//!   `erm.attn.{q,k,v,out}` (evidence_dim→evidence_dim; `k` without bias), `erm.gru.{weight_ih,weight_hh,
//!   bias_ih,bias_hh}` (PyTorch `GRUCell` names and shapes, `[3·D, D]` / `[3·D]`),
//!   `erm.head` (evidence_dim→1, shared by all rounds);
//! - `classifier_dual` (2·evidence_dim→1) with both modules, `classifier_single`
//!   (evidence_dim→1) with one;
//! - `gating_logit` (a 0-dim scalar, initialised to `logit(gating_init)`).
//!
//! `iterations` changes no variable (the rounds share every weight).

use flow_stages::model::Radar as RadarConfig;
use tch::nn::{self, Module};
use tch::{Kind, Reduction, Tensor};

use super::evidence::{BoundaryEvidence, Evidence, FrequencyEvidence};
use crate::backbones::Backbone;
use crate::nets::{Detector, TrainOut};

/// What [`Erm::forward`] gives.
pub struct ErmOut {
    /// The shared head's logit after each round, `[N, iterations]`.
    pub logits: Tensor,
    /// Each round's attention over the evidence sources (averaged over heads; rows sum to 1),
    /// `[N, iterations, sources]`.
    pub attention: Tensor,
}

/// The evidence refinement module. Each source's evidence is projected to the hidden width
/// (`= evidence_dim`); the hidden state starts as `tanh(mean of the projections)`; each round
/// runs multi-head cross-attention (query: the hidden state; keys and values: the projected
/// evidence vectors), feeds the attended context to a GRU cell as its input, and reads a
/// logit off the new hidden state with a shared linear head.
///
/// With one source, the softmax over one key is 1: the attention weights are constant and
/// the query/key projections get zero gradient (as in the seed).
pub struct Erm {
    proj: Vec<nn::Linear>,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    head: nn::Linear,
    hidden: i64,
    heads: i64,
    iterations: i64,
}

impl Erm {
    /// `sources`: the names of the evidence sources, in the order [`Erm::forward`] gets them
    /// (`erm.proj.<name>`). `heads` must divide `hidden`.
    pub fn new(p: &nn::Path, sources: &[&str], hidden: i64, heads: i64, iterations: i64) -> Self {
        let lin = |name: &str| nn::linear(p / "attn" / name, hidden, hidden, Default::default());
        let g = p / "gru";
        // PyTorch's GRUCell init: every weight uniform(±1/√hidden).
        let b = 1.0 / (hidden as f64).sqrt();
        let u = || nn::Init::Uniform { lo: -b, up: b };
        Erm {
            proj: sources
                .iter()
                .map(|s| nn::linear(p / "proj" / *s, hidden, hidden, Default::default()))
                .collect(),
            q: lin("q"),
            // No key bias: it shifts every score of a query equally, which the softmax ignores.
            k: nn::linear(
                p / "attn" / "k",
                hidden,
                hidden,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            ),
            v: lin("v"),
            out: lin("out"),
            w_ih: g.var("weight_ih", &[3 * hidden, hidden], u()),
            w_hh: g.var("weight_hh", &[3 * hidden, hidden], u()),
            b_ih: g.var("bias_ih", &[3 * hidden], u()),
            b_hh: g.var("bias_hh", &[3 * hidden], u()),
            head: nn::linear(p / "head", hidden, 1, Default::default()),
            hidden,
            heads,
            iterations,
        }
    }

    /// `evidence`: one `[N, hidden]` tensor per source, in the order given to [`Erm::new`].
    pub fn forward(&self, evidence: &[&Tensor]) -> ErmOut {
        assert_eq!(evidence.len(), self.proj.len(), "one evidence tensor per source");
        let n = evidence[0].size()[0];
        let s = evidence.len() as i64;
        let (hd, dh) = (self.heads, self.hidden / self.heads);
        let tokens = Tensor::stack(
            &self
                .proj
                .iter()
                .zip(evidence)
                .map(|(p, e)| p.forward(e))
                .collect::<Vec<_>>(),
            1,
        ); // [N, S, D]
        let mut h = tokens.mean_dim([1i64].as_slice(), false, tokens.kind()).tanh();
        // Keys and values do not change over the rounds.
        let split = |t: Tensor| t.view([n, s, hd, dh]).permute([0, 2, 1, 3]); // [N, H, S, dh]
        let k = split(self.k.forward(&tokens));
        let v = split(self.v.forward(&tokens));
        let scale = 1.0 / (dh as f64).sqrt();
        let (mut logits, mut attention) = (Vec::new(), Vec::new());
        for _ in 0..self.iterations {
            let q = self.q.forward(&h).view([n, hd, 1, dh]);
            let a = (q.matmul(&k.transpose(-2, -1)) * scale).softmax(-1, Kind::Float); // [N, H, 1, S]
            let ctx = a.to_kind(v.kind()).matmul(&v).view([n, self.hidden]); // heads concatenated
            let ctx = self.out.forward(&ctx);
            h = ctx.gru_cell(&h, &self.w_ih, &self.w_hh, Some(&self.b_ih), Some(&self.b_hh));
            logits.push(self.head.forward(&h).view([n]).to_kind(Kind::Float));
            attention.push(a.mean_dim([1i64, 2].as_slice(), false, Kind::Float));
            // [N, S]
        }
        ErmOut {
            logits: Tensor::stack(&logits, 1),
            attention: Tensor::stack(&attention, 1),
        }
    }
}

/// Everything one RADAR forward pass gives (the seed's output dictionary).
pub struct RadarOut {
    /// `α·reasoning + (1 − α)·external`, `[N]` f32.
    pub logit: Tensor,
    /// The last round's logit, `[N]`.
    pub reasoning_logit: Tensor,
    /// The external classifier's logit, `[N]`.
    pub external_logit: Tensor,
    /// `[N, iterations]`.
    pub iteration_logits: Tensor,
    /// `[N, iterations, sources]` (sources: BADM then AADM, the enabled ones).
    pub attention: Tensor,
    /// α as a 0-dim tensor (part of the graph).
    pub alpha: Tensor,
    pub badm: Option<Evidence>,
    pub aadm: Option<Evidence>,
}

/// RADAR's loss, each part per sample `[N]` and already weighted by its λ;
/// `total = main + branch + orthogonal + deep`.
pub struct RadarLoss {
    /// BCE of the fused logit against the smoothed target `y·(1 − ε) + ε/2`.
    pub main: Tensor,
    /// `λ_branch ·` mean over the enabled modules of their branch logits' BCE.
    pub branch: Tensor,
    /// `λ_ortho · relu(|cos(badm, aadm)| − margin)`; 0 unless both modules are on.
    pub orthogonal: Tensor,
    /// `λ_deep · Σ_t w_t · BCE(round t)`, `w_t = t / Σ t` (t = 1..T); 0 with one round.
    pub deep: Tensor,
    pub total: Tensor,
}

/// The RADAR detector (see the module docs for its variables).
pub struct RadarNet {
    backbone: Box<dyn Backbone>,
    badm: Option<BoundaryEvidence>,
    aadm: Option<FrequencyEvidence>,
    erm: Erm,
    classifier: nn::Linear,
    gating_logit: Tensor,
    cfg: RadarConfig,
}

impl RadarNet {
    /// RADAR on `backbone` (built by the caller) with its variables under `p`. `size` (the
    /// input side) is not needed: the spectrum is resized to `fft_size` and everything else
    /// pools globally. Err on a config the model cannot be built for.
    pub fn new(p: &nn::Path, cfg: &RadarConfig, backbone: Box<dyn Backbone>, size: i64) -> Result<Self, String> {
        let _ = size;
        if !cfg.boundary && !cfg.frequency {
            return Err("Radar needs at least one evidence module: `boundary` or `frequency` must be true".into());
        }
        if cfg.evidence_dim < 1 || cfg.heads < 1 || cfg.evidence_dim % cfg.heads != 0 {
            return Err(format!(
                "Radar `heads` {} must divide `evidence_dim` {}",
                cfg.heads, cfg.evidence_dim
            ));
        }
        if cfg.iterations < 1 {
            return Err(format!("Radar `iterations` {} must be at least 1", cfg.iterations));
        }
        if cfg.frequency && cfg.fft_size < 8 {
            return Err(format!("Radar `fft_size` {} must be at least 8", cfg.fft_size));
        }
        if !(cfg.gating_init > 0.0 && cfg.gating_init < 1.0) {
            return Err(format!("Radar `gating_init` {} must be in (0, 1)", cfg.gating_init));
        }
        let last = *backbone
            .map_channels()
            .last()
            .ok_or("Radar's backbone gives no feature maps")?;
        let e = cfg.evidence_dim;
        let badm = cfg
            .boundary
            .then(|| BoundaryEvidence::new(&(p / "badm"), last, e, cfg.dropout));
        let aadm = cfg
            .frequency
            .then(|| FrequencyEvidence::new(&(p / "aadm"), backbone.pooled_dim(), e, cfg.fft_size, cfg.dropout));
        let mut sources = Vec::new();
        if cfg.boundary {
            sources.push("badm");
        }
        if cfg.frequency {
            sources.push("aadm");
        }
        let erm = Erm::new(&(p / "erm"), &sources, e, cfg.heads, cfg.iterations);
        let classifier = if sources.len() == 2 {
            nn::linear(p / "classifier_dual", 2 * e, 1, Default::default())
        } else {
            nn::linear(p / "classifier_single", e, 1, Default::default())
        };
        let g = cfg.gating_init;
        let gating_logit = p.var("gating_logit", &[], nn::Init::Const((g / (1.0 - g)).ln()));
        Ok(RadarNet {
            backbone,
            badm,
            aadm,
            erm,
            classifier,
            gating_logit,
            cfg: cfg.clone(),
        })
    }

    /// The full forward pass.
    pub fn forward_all(&self, xs: &Tensor, train: bool) -> RadarOut {
        let features = self.backbone.features(xs, train);
        let badm = self.badm.as_ref().map(|m| m.forward(xs, &features, train));
        let aadm = self.aadm.as_ref().map(|m| m.forward(xs, &features, train));
        let ev: Vec<&Tensor> = badm.iter().chain(aadm.iter()).map(|e| &e.evidence).collect();
        let erm = self.erm.forward(&ev);
        let t = self.cfg.iterations;
        let reasoning_logit = erm.logits.select(1, t - 1);
        let external_logit = self
            .classifier
            .forward(&Tensor::cat(&ev, 1))
            .view([-1])
            .to_kind(Kind::Float);
        let alpha = self.gating_logit.sigmoid();
        let logit = &alpha * &reasoning_logit + (1.0 - &alpha) * &external_logit;
        RadarOut {
            logit,
            reasoning_logit,
            external_logit,
            iteration_logits: erm.logits,
            attention: erm.attention,
            alpha,
            badm,
            aadm,
        }
    }

    /// RADAR's loss of `out` for 0/1 targets `y` (`[N]`), per sample.
    pub fn loss(&self, out: &RadarOut, y: &Tensor) -> RadarLoss {
        let c = &self.cfg;
        let eps = c.label_smoothing;
        let y = y.to_kind(Kind::Float).view([-1]) * (1.0 - eps) + 0.5 * eps;
        let bce = |l: &Tensor| {
            l.to_kind(Kind::Float)
                .binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::None)
        };
        let main = bce(&out.logit);
        let branches: Vec<Tensor> = out.badm.iter().chain(out.aadm.iter()).map(|e| bce(&e.logit)).collect();
        let branch = Tensor::stack(&branches, 0).mean_dim([0i64].as_slice(), false, Kind::Float) * c.lambda_branch;
        let orthogonal = match (&out.badm, &out.aadm) {
            (Some(b), Some(a)) => {
                let cos = Tensor::cosine_similarity(
                    &b.evidence.to_kind(Kind::Float),
                    &a.evidence.to_kind(Kind::Float),
                    1,
                    1e-8,
                );
                (cos.abs() - c.orthogonality_margin).relu() * c.lambda_orthogonal
            }
            _ => main.zeros_like(),
        };
        let t = c.iterations;
        let deep = if t > 1 {
            let total: f64 = (1..=t).map(|i| i as f64).sum();
            (0..t)
                .map(|i| bce(&out.iteration_logits.select(1, i)) * ((i + 1) as f64 / total))
                .reduce(|a, b| a + b)
                .expect("t > 1")
                * c.lambda_deep_supervision
        } else {
            main.zeros_like()
        };
        let total = &main + &branch + &orthogonal + &deep;
        RadarLoss {
            main,
            branch,
            orthogonal,
            deep,
            total,
        }
    }

    /// The gate's current α = sigmoid(`gating_logit`).
    pub fn gating_alpha(&self) -> f64 {
        tch::no_grad(|| self.gating_logit.sigmoid().double_value(&[]))
    }
}

impl Detector for RadarNet {
    fn logit(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_all(xs, train).logit
    }
    fn train_forward(&self, xs: &Tensor, y: &Tensor) -> TrainOut {
        let out = self.forward_all(xs, true);
        let loss = self.loss(&out, y).total;
        TrainOut {
            logit: out.logit,
            loss: Some(loss),
        }
    }
    /// `reasoning_logit` (the last round's) and `convergence_delta`
    /// `|σ(round T) − σ(round T−1)|` (0 with one round), eval mode, without gradients.
    fn probes(&self, xs: &Tensor) -> Vec<(&'static str, Tensor)> {
        tch::no_grad(|| {
            let out = self.forward_all(xs, false);
            let t = self.cfg.iterations;
            let delta = if t > 1 {
                let p = out.iteration_logits.sigmoid();
                (p.select(1, t - 1) - p.select(1, t - 2)).abs()
            } else {
                out.reasoning_logit.zeros_like()
            };
            vec![("reasoning_logit", out.reasoning_logit), ("convergence_delta", delta)]
        })
    }
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        vec![("gating_alpha", self.gating_alpha())]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backbones::{global_avg, Features, FnBackbone};
    use tch::{nn::OptimizerConfig, Device};

    /// A tiny conv backbone under `p`: maps of 8, 16 and 32 channels at strides 8, 16 and 32
    /// (4×4, 2×2, 1×1 at 32 px), pooled by global average of the last.
    pub(crate) fn tiny_backbone(p: &nn::Path) -> FnBackbone {
        let cfg = |stride| nn::ConvConfig {
            stride,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let chans = [3i64, 8, 16, 32];
        let layers: Vec<(nn::Conv2D, nn::BatchNorm)> = (0..3)
            .map(|i| {
                let q = p / "blocks" / i;
                let s = if i == 0 { 4 } else { 2 };
                (
                    nn::conv2d(&q / "conv", chans[i], chans[i + 1], 3, cfg(s)),
                    nn::batch_norm2d(&q / "bn", chans[i + 1], Default::default()),
                )
            })
            .collect();
        FnBackbone {
            f: Box::new(move |xs: &Tensor, train: bool| {
                let mut x = xs.shallow_clone();
                let mut maps = Vec::new();
                for (i, (conv, bn)) in layers.iter().enumerate() {
                    x = x.apply(conv).apply_t(bn, train).relu();
                    if i == 0 {
                        x = x.max_pool2d_default(2);
                    }
                    maps.push(x.shallow_clone());
                }
                let pooled = global_avg(&x);
                Features { maps, pooled }
            }),
            maps: chans[1..].to_vec(),
            pooled: 32,
        }
    }

    fn config(boundary: bool, frequency: bool, iterations: i64) -> RadarConfig {
        RadarConfig {
            boundary,
            frequency,
            iterations,
            evidence_dim: 16,
            heads: 4,
            fft_size: 32,
            ..Default::default()
        }
    }

    fn build(cfg: &RadarConfig, seed: i64) -> (nn::VarStore, RadarNet) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let b = tiny_backbone(&(&root / "backbone"));
        let m = RadarNet::new(&root, cfg, Box::new(b), 32).unwrap();
        (vs, m)
    }

    fn batch() -> (Tensor, Tensor) {
        tch::manual_seed(7);
        let xs = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        (xs, Tensor::from_slice(&[0f32, 1.0, 0.0, 1.0]))
    }

    fn names(vs: &nn::VarStore) -> Vec<String> {
        let mut v: Vec<String> = vs.variables().into_keys().collect();
        v.sort();
        v
    }

    fn finite(t: &Tensor) -> bool {
        t.isfinite().all().int64_value(&[]) == 1
    }

    #[test]
    fn radar_shapes_probes_and_scalars() {
        let _g = crate::torch_serial();
        let (_vs, m) = build(&config(true, true, 3), 0);
        let (xs, y) = batch();
        let out = m.train_forward(&xs, &y);
        assert_eq!(out.logit.size(), [4]);
        let loss = out.loss.unwrap();
        assert_eq!(loss.size(), [4]);
        assert!(finite(&loss) && finite(&out.logit));
        assert_eq!(m.logit(&xs, false).size(), [4]);
        let all = m.forward_all(&xs, false);
        assert_eq!(all.iteration_logits.size(), [4, 3]);
        assert_eq!(all.attention.size(), [4, 3, 2]);
        let rows = all.attention.sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        assert!((rows - 1.0).abs().max().double_value(&[]) < 1e-5);
        let probes = m.probes(&xs);
        assert_eq!(
            probes.iter().map(|p| p.0).collect::<Vec<_>>(),
            ["reasoning_logit", "convergence_delta"]
        );
        for (_, t) in &probes {
            assert_eq!(t.size(), [4]);
            assert!(finite(t));
        }
        assert!(probes[1].1.min().double_value(&[]) >= 0.0);
        assert_eq!(probes[0].1, all.iteration_logits.select(1, 2));
        // With one round the convergence delta is 0.
        let (_vs1, m1) = build(&config(true, true, 1), 0);
        assert_eq!(m1.probes(&xs)[1].1.abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn radar_gradients_reach_every_variable() {
        let _g = crate::torch_serial();
        let (vs, m) = build(&config(true, true, 3), 1);
        let (xs, y) = batch();
        tch::manual_seed(3);
        let loss = m.train_forward(&xs, &y).loss.unwrap().mean(Kind::Float);
        loss.backward();
        let mut missing = Vec::new();
        for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            let g = t.grad();
            if !g.defined() || !finite(&g) || g.abs().max().double_value(&[]) == 0.0 {
                missing.push(name);
            }
        }
        missing.sort();
        assert!(missing.is_empty(), "no (finite, nonzero) gradient: {missing:?}");
        assert!(names(&vs).iter().any(|n| n.starts_with("backbone.")));
    }

    #[test]
    fn radar_is_deterministic() {
        let _g = crate::torch_serial();
        let (xs, y) = batch();
        let run = || {
            let (_vs, m) = build(&config(true, true, 3), 5);
            tch::manual_seed(11);
            let out = m.train_forward(&xs, &y);
            (out.logit, out.loss.unwrap(), m.logit(&xs, false))
        };
        let (a, b) = (run(), run());
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2);
    }

    #[test]
    fn radar_ablations_change_variables_as_documented() {
        let _g = crate::torch_serial();
        let (full, _) = build(&config(true, true, 3), 0);
        let (bo, _) = build(&config(true, false, 3), 0);
        let (fo, _) = build(&config(false, true, 3), 0);
        let (full, bo, fo) = (names(&full), names(&bo), names(&fo));
        assert!(full.iter().any(|n| n.starts_with("badm.")) && full.iter().any(|n| n.starts_with("aadm.")));
        assert!(full.contains(&"classifier_dual.weight".to_string()));
        assert!(!full.iter().any(|n| n.starts_with("classifier_single")));
        assert!(full.contains(&"gating_logit".to_string()));
        assert!(full.contains(&"erm.gru.weight_ih".to_string()));
        assert!(!bo.iter().any(|n| n.starts_with("aadm.") || n == "erm.proj.aadm.weight"));
        assert!(bo.contains(&"classifier_single.weight".to_string()));
        assert!(!bo.iter().any(|n| n.starts_with("classifier_dual")));
        assert!(!fo.iter().any(|n| n.starts_with("badm.") || n == "erm.proj.badm.weight"));
        assert!(fo.contains(&"classifier_single.weight".to_string()));
        // iterations share every weight
        let count = |vs: &nn::VarStore| vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>();
        let (v1, m1) = build(&config(true, true, 1), 0);
        let (v3, _) = build(&config(true, true, 3), 0);
        assert_eq!(names(&v1), names(&v3));
        assert_eq!(count(&v1), count(&v3));
        // deep supervision is 0 with one round, not with three
        let (xs, y) = batch();
        let l1 = m1.loss(&m1.forward_all(&xs, true), &y);
        assert_eq!(l1.deep.abs().max().double_value(&[]), 0.0);
        let (_v3, m3) = build(&config(true, true, 3), 0);
        let l3 = m3.loss(&m3.forward_all(&xs, true), &y);
        assert!(l3.deep.min().double_value(&[]) > 0.0);
        // single-source models run, with no orthogonality term
        for cfg in [config(true, false, 2), config(false, true, 2)] {
            let (_v, m) = build(&cfg, 0);
            let out = m.forward_all(&xs, true);
            assert_eq!(out.attention.size(), [4, 2, 1]);
            let l = m.loss(&out, &y);
            assert_eq!(l.orthogonal.abs().max().double_value(&[]), 0.0);
            assert!(finite(&l.total));
        }
        // no evidence module: an error
        assert!(RadarNet::new(
            &nn::VarStore::new(Device::Cpu).root(),
            &config(false, false, 3),
            Box::new(tiny_backbone(&nn::VarStore::new(Device::Cpu).root())),
            32
        )
        .is_err());
    }

    #[test]
    fn radar_gating_starts_at_gating_init() {
        let _g = crate::torch_serial();
        let cfg = RadarConfig {
            gating_init: 0.3,
            ..config(true, true, 3)
        };
        let (_vs, m) = build(&cfg, 0);
        let s = m.scalars();
        assert_eq!(s[0].0, "gating_alpha");
        assert!((s[0].1 - 0.3).abs() < 1e-6, "{}", s[0].1);
        let (xs, _) = batch();
        let out = m.forward_all(&xs, false);
        let mix = &out.reasoning_logit * 0.3 + &out.external_logit * 0.7;
        assert!((out.logit - mix).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn radar_loss_matches_its_formula() {
        let _g = crate::torch_serial();
        let (_vs, m) = build(&config(true, true, 3), 2);
        let (xs, y) = batch();
        let out = m.forward_all(&xs, false);
        let l = m.loss(&out, &y);
        let ys = &y * 0.9 + 0.05;
        let bce = |z: &Tensor| z.binary_cross_entropy_with_logits::<Tensor>(&ys, None, None, Reduction::None);
        let b = out.badm.as_ref().unwrap();
        let a = out.aadm.as_ref().unwrap();
        let branch = (bce(&b.logit) + bce(&a.logit)) * 0.5 * 0.3;
        let cos = Tensor::cosine_similarity(&b.evidence, &a.evidence, 1, 1e-8);
        let ortho = (cos.abs() - 0.1).relu() * 0.1;
        let it = |i| bce(&out.iteration_logits.select(1, i));
        let deep = (it(0) * (1.0 / 6.0) + it(1) * (2.0 / 6.0) + it(2) * (3.0 / 6.0)) * 0.05;
        let total = bce(&out.logit) + branch + ortho + deep;
        assert!((l.total - total).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn radar_learns_a_separable_toy_batch() {
        let _g = crate::torch_serial();
        let cfg = RadarConfig {
            dropout: 0.0,
            ..config(true, true, 2)
        };
        let (vs, m) = build(&cfg, 3);
        tch::manual_seed(9);
        let y = Tensor::from_slice(&[0f32, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        // fakes carry a high-frequency pattern and are brighter
        let noise = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.1;
        let checker = Tensor::from_slice(&(0..32 * 32).map(|k| ((k / 32 + k % 32) % 2) as f32).collect::<Vec<_>>())
            .view([1, 1, 32, 32]);
        let xs = noise + y.view([8, 1, 1, 1]) * (checker + 0.5);
        let mut opt = nn::Adam::default().build(&vs, 5e-3).unwrap();
        let mean_loss = |m: &RadarNet| m.train_forward(&xs, &y).loss.unwrap().mean(Kind::Float);
        let first = mean_loss(&m).double_value(&[]);
        for _ in 0..10 {
            let l = mean_loss(&m);
            opt.backward_step(&l);
        }
        let last = mean_loss(&m).double_value(&[]);
        assert!(last < first * 0.8, "loss {first} → {last}");
    }
}
