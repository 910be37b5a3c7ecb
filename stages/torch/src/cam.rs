//! Class-activation maps of a net's declared layers (`Model::cam_layers`), computed as
//! pytorch-grad-cam (`grad-cam` on PyPI) computes them, so the maps match it
//! (`reference_gradcam_matches_pytorch_grad_cam`):
//!
//! * target: the logit (`Fake`: "why fake") or the logit signed by the prediction
//!   (`Predicted`, pytorch-grad-cam's default of the highest-scoring class, here
//!   `BinaryClassifierOutputTarget`); one backward pass of the batch's summed target gives
//!   every layer's gradients (eval mode: the items do not interact);
//! * Grad-CAM: weights = the spatial mean of the gradients; map = ReLU(Σ_c w_c A_c);
//! * Grad-CAM++: weights = Σ_ij ReLU(g) · α, α = g² / (2g² + Σ_ij A · g³ + 1e-6) (0 where g = 0);
//! * each layer's map is min-max scaled per item (`x - min`, `/ (max + 1e-7)`), resized to the
//!   input bilinearly (half-pixel centres, as `cv2.resize`), and scaled again;
//! * multi-scale (seed 001): the Grad-CAMs of the three layers (strides 8, 16, 32), each scaled,
//!   resized to the first layer's grid, fused with weights 0.3 / 0.3 / 0.4, then as above;
//! * attention: the model's own spatial attention (Spotter), resized and scaled the same way.
//!
//! Maps come back on the CPU as `[N, H, W]` f32 in `[0, 1]`.

use flow_stages::explain::{CamMethod, CamTarget};
use tch::{Kind, Tensor};

use crate::nets::Net;
use crate::util::Res;

/// The multi-scale fusion weights, fine to semantic (seed 001).
pub const MULTISCALE_WEIGHTS: [f64; 3] = [0.3, 0.3, 0.4];

/// What one batch gives: the logits and one `[N, H, W]` map per requested method.
pub struct CamBatch {
    pub logits: Vec<f64>,
    pub maps: Vec<Tensor>,
}

/// The maps of `methods` for a normalised batch `xs` `[N, 3, H, W]`; `layer` indexes the
/// net's taps for Grad-CAM and Grad-CAM++ (multi-scale uses the three). Errors name what is
/// missing (a net without taps, a method the net cannot give).
pub fn cams(net: &Net, xs: &Tensor, layer: usize, methods: &[CamMethod], target: CamTarget) -> Res<CamBatch> {
    let tap = net.tap.as_ref().ok_or("this model declares no Grad-CAM layers")?;
    let (h, w) = (xs.size()[2], xs.size()[3]);
    tap.arm();
    let logit = net.module.logit(xs, false);
    let acts = tap.take();
    if acts.is_empty() {
        return Err("the model's forward pass recorded no activations".into());
    }
    if layer >= acts.len() {
        return Err(format!("layer {layer} of a model with {} Grad-CAM layers", acts.len()));
    }
    let sign = match target {
        CamTarget::Fake => Tensor::ones_like(&logit),
        CamTarget::Predicted => logit.detach().ge(0.0).to_kind(Kind::Float) * 2.0 - 1.0,
    };
    let goal = (&logit * sign).sum(Kind::Float);
    // A layer the logit does not depend on (a Radar without the maps' path) has no gradient:
    // its maps are zero.
    let grads: Vec<Tensor> = Tensor::run_backward(&[goal], &acts, false, false)
        .into_iter()
        .zip(&acts)
        .map(|(g, a)| if g.defined() { g } else { a.zeros_like() })
        .collect();
    let logits = Vec::<f64>::try_from(logit.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu))
        .map_err(|e| e.to_string())?;
    let mut maps = Vec::with_capacity(methods.len());
    for m in methods {
        let map = match m {
            CamMethod::GradCam => scaled(&grad_cam(&acts[layer], &grads[layer]), h, w),
            CamMethod::GradCamPlusPlus => scaled(&grad_cam_pp(&acts[layer], &grads[layer]), h, w),
            CamMethod::MultiScale => {
                if acts.len() < 3 {
                    return Err(format!(
                        "MultiScale needs three Grad-CAM layers; this model has {}",
                        acts.len()
                    ));
                }
                let k = acts.len() - 3;
                let fine = acts[k].size();
                let (fh, fw) = (fine[2], fine[3]);
                let mut fused = Tensor::zeros([fine[0], fh, fw], (Kind::Float, xs.device()));
                for (i, wt) in MULTISCALE_WEIGHTS.iter().enumerate() {
                    fused += scaled(&grad_cam(&acts[k + i], &grads[k + i]), fh, fw) * *wt;
                }
                scaled(&fused, h, w)
            }
            CamMethod::Attention => {
                let a = net
                    .module
                    .attention(xs)
                    .ok_or("Attention maps need a model with spatial attention (Spotter)")?;
                scaled(&a.squeeze_dim(1), h, w)
            }
        };
        maps.push(map.detach().to_device(tch::Device::Cpu));
    }
    Ok(CamBatch { logits, maps })
}

/// ReLU(Σ_c mean_ij(g) · A): `[N, h, w]`.
fn grad_cam(a: &Tensor, g: &Tensor) -> Tensor {
    let wts = g.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
    (a * wts).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).relu()
}

/// Grad-CAM++'s weights (pytorch-grad-cam's `GradCAMPlusPlus.get_cam_weights`): `[N, h, w]`.
fn grad_cam_pp(a: &Tensor, g: &Tensor) -> Tensor {
    let g2 = g * g;
    let g3 = &g2 * g;
    let sum_a = a.sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float);
    let aij = &g2 / (&g2 * 2.0 + sum_a * g3 + 1e-6);
    let aij = aij.where_self(&g.ne(0.0), &aij.zeros_like());
    let wts = (g.relu() * aij).sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float);
    (a * wts).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).relu()
}

/// Min-max scaled per item, resized bilinearly to `h`×`w`, scaled again (`[N, h, w]`).
fn scaled(m: &Tensor, h: i64, w: i64) -> Tensor {
    let m = minmax(&m.relu());
    let m = if m.size()[1] == h && m.size()[2] == w {
        m
    } else {
        m.unsqueeze(1)
            .upsample_bilinear2d([h, w], false, None, None)
            .squeeze_dim(1)
    };
    minmax(&m)
}

fn minmax(m: &Tensor) -> Tensor {
    let dims = [1i64, 2];
    let m = m - m.amin(dims.as_slice(), true);
    &m / (m.amax(dims.as_slice(), true) + 1e-7)
}

/// Localisation of a map `[H·W]` (in `[0, 1]`) against a mask (`[H·W]`, 0..=255): the share
/// of the map's energy inside the mask (mask-weighted) and whether the map's maximum (the
/// first, in row-major order) falls where the mask is at least half.
pub fn localise(map: &[f32], mask: &[u8]) -> (f64, bool) {
    let total: f64 = map.iter().map(|&v| f64::from(v)).sum();
    let inside: f64 = map
        .iter()
        .zip(mask)
        .map(|(&v, &m)| f64::from(v) * f64::from(m) / 255.0)
        .sum();
    let arg = map
        .iter()
        .enumerate()
        .fold((0usize, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0;
    let energy = if total > 0.0 { inside / total } else { 0.0 };
    (energy, mask.get(arg).is_some_and(|&m| m >= 128))
}

#[cfg(test)]
mod tests {
    use flow_stages::explain::{CamMethod, CamTarget};
    use flow_stages::model::{GlobalPool, Model};
    use tch::{nn, Device, Kind, Tensor};

    use super::*;
    use crate::nets;

    fn models() -> Vec<(Model, usize)> {
        let cnn = Model::SimpleCnn {
            width: 8,
            depth: 4,
            highpass: true,
            pool: GlobalPool::Max,
        };
        let radar: Model =
            serde_json::from_value(serde_json::json!({"Radar": {"backbone": {"SimpleCnn": {"width": 8, "depth": 3}}}}))
                .unwrap();
        let spotter: Model =
            serde_json::from_value(serde_json::json!({"Spotter": {"backbone": "EfficientNetB0"}})).unwrap();
        vec![
            (cnn, 32),
            (Model::ResNet18, 64),
            (Model::EfficientNetB0, 64),
            (Model::ConvNeXtTiny, 64),
            (Model::MobileNetV3Small, 64),
            (Model::MobileNetV4ConvSmall, 64),
            (Model::VitS16, 32),
            (radar, 32),
            (spotter, 64),
        ]
    }

    #[test]
    fn every_model_with_declared_layers_taps_them_and_gives_maps() {
        let _g = crate::torch_serial();
        tch::manual_seed(1);
        for (m, size) in models() {
            let net = nets::build(&m, Device::Cpu, size).unwrap();
            let layers = m.cam_layers().unwrap();
            let x = Tensor::randn([2, 3, size as i64, size as i64], (Kind::Float, Device::Cpu));
            let tap = net.tap.as_ref().expect("a tap");
            tap.arm();
            let _ = net.module.logit(&x, false);
            let acts = tap.take();
            assert_eq!(acts.len(), layers.len(), "{m:?}: taps vs {layers:?}");
            let mut methods = vec![CamMethod::GradCam, CamMethod::GradCamPlusPlus];
            if layers.len() >= 3 {
                methods.push(CamMethod::MultiScale);
            }
            if matches!(m, Model::Spotter(_)) {
                methods.push(CamMethod::Attention);
            }
            let c = cams(&net, &x, layers.len() - 1, &methods, CamTarget::Fake).unwrap();
            for map in &c.maps {
                assert_eq!(map.size(), vec![2, size as i64, size as i64], "{m:?}");
                let (lo, hi) = (map.min().double_value(&[]), map.max().double_value(&[]));
                assert!((0.0..=1.0).contains(&lo) && hi <= 1.0 + 1e-6, "{m:?}: [{lo}, {hi}]");
            }
            // The tap is off again: a plain forward pass records nothing.
            let _ = net.module.logit(&x, false);
            assert!(tap.take().is_empty());
        }
        assert!(nets::build(&Model::MobileNetV2, Device::Cpu, 32).unwrap().tap.is_none());
    }

    #[test]
    fn resnet_classifiers_are_tch_vision_resnets_weight_for_weight() {
        // flow builds ResNets itself (for the taps); the same seed must give the same
        // weights and logits as `tch::vision::resnet` did, so cached models stay valid.
        let _g = crate::torch_serial();
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let old = tch::vision::resnet::resnet18(&vs.root(), 1);
        tch::manual_seed(5);
        let new = nets::build(&Model::ResNet18, Device::Cpu, 64).unwrap();
        nets::init_batch_norm(&vs);
        let (a, b) = (nets::named(&vs), nets::named(&new.vs));
        assert_eq!(
            a.iter().map(|x| &x.0).collect::<Vec<_>>(),
            b.iter().map(|x| &x.0).collect::<Vec<_>>()
        );
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{n} differs");
        }
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let (la, lb) = (
            nn::ModuleT::forward_t(&old, &x, false).view([-1]),
            new.module.logit(&x, false),
        );
        assert!(la.allclose(&lb, 1e-6, 1e-6, false));
    }
}

/// pytorch-grad-cam on torchvision's ResNet18 with flow's weights (argv: weights, input,
/// output): Grad-CAM and Grad-CAM++ at `layer4[-1]` and Grad-CAM at `layer3[-1]`, target
/// `BinaryClassifierOutputTarget(1)` (the logit).
#[cfg(test)]
const REFERENCE: &str = r#"
import sys, torch, torchvision
from safetensors.torch import load_file, save_file
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
m = torchvision.models.resnet18(num_classes=1)
m.load_state_dict(load_file(sys.argv[1]))
m.eval()
x = load_file(sys.argv[2])["x"]
t = [BinaryClassifierOutputTarget(1) for _ in range(x.shape[0])]
out = {}
for name, cls, layer in [("gradcam", GradCAM, m.layer4[-1]), ("gradcampp", GradCAMPlusPlus, m.layer4[-1]), ("gradcam_layer3", GradCAM, m.layer3[-1])]:
    with cls(model=m, target_layers=[layer]) as cam:
        out[name] = torch.from_numpy(cam(input_tensor=x, targets=t)).float().contiguous()
save_file(out, sys.argv[3])
"#;

#[cfg(test)]
mod reference {
    use flow_stages::explain::{CamMethod, CamTarget};
    use flow_stages::ports::tensors::Normalize;
    use serde_json::json;
    use tch::{Device, Kind, Tensor};

    use crate::run::run_spec;
    use crate::testdata::{self, input, spec};
    use crate::train::Hooks;

    fn corr(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.view([-1]).to_kind(Kind::Double), b.view([-1]).to_kind(Kind::Double));
        let (a, b) = (&a - a.mean(Kind::Double), &b - b.mean(Kind::Double));
        let d = (a.dot(&a) * b.dot(&b)).sqrt().double_value(&[]);
        if d == 0.0 {
            return f64::NAN;
        }
        a.dot(&b).double_value(&[]) / d
    }

    #[test]
    fn reference_gradcam_matches_pytorch_grad_cam() {
        let _g = crate::torch_serial();
        let tmp = tempfile::tempdir().unwrap();
        let s = testdata::make(tmp.path(), 32, 32, 2, Normalize::ImageNet, None);
        let params = json!({"data": "preprocess", "split": "split", "model": "ResNet18",
                            "epochs": 1, "lr": 1e-3, "batch_size": 8, "seed": 3, "device": "Cpu"});
        let ins = vec![
            input("data", "preprocess", None, &s.data),
            input("split", "split", None, &s.split),
        ];
        let tr = spec("Train", params, Some(0), tmp.path(), "train", ins);
        run_spec(&tr, &Hooks::default()).unwrap();
        let weights = tr.out_dir.join("model.safetensors");
        let net = crate::nets::build(&flow_stages::model::Model::ResNet18, Device::Cpu, 128).unwrap();
        let src = crate::nets::read_tensors(&weights).unwrap();
        crate::nets::load_exact(&net.vs, &src, "trained ResNet18").unwrap();
        // 128 px: layer4 is 4×4, layer3 8×8 (the net is fully convolutional).
        tch::manual_seed(11);
        let x = Tensor::randn([6, 3, 128, 128], (Kind::Float, Device::Cpu));
        let xin = tmp.path().join("x.safetensors");
        crate::nets::save_tensors(&[("x".to_string(), x.shallow_clone())], &xin).unwrap();
        let out = tmp.path().join("ref.safetensors");
        testdata::run_python(
            super::REFERENCE,
            &[weights.as_os_str(), xin.as_os_str(), out.as_os_str()],
        );
        let want = crate::nets::read_tensors(&out).unwrap();
        let methods = [CamMethod::GradCam, CamMethod::GradCamPlusPlus];
        let got = super::cams(&net, &x, 2, &methods, CamTarget::Fake).unwrap();
        let got3 = super::cams(&net, &x, 1, &[CamMethod::GradCam], CamTarget::Fake).unwrap();
        for (name, ours) in [
            ("gradcam", &got.maps[0]),
            ("gradcampp", &got.maps[1]),
            ("gradcam_layer3", &got3.maps[0]),
        ] {
            let theirs = &want[name];
            assert_eq!(ours.size(), theirs.size(), "{name}");
            let mut compared = 0;
            for i in 0..6 {
                let (a, b) = (ours.get(i), theirs.get(i));
                let r = corr(&a, &b);
                let flat = b.max().double_value(&[]) == 0.0 && a.max().double_value(&[]) < 1e-6;
                assert!(flat || r >= 0.99, "{name} item {i}: correlation {r}");
                compared += usize::from(!flat);
            }
            assert!(compared >= 4, "{name}: only {compared} of 6 maps are not flat");
        }
    }
}

#[cfg(test)]
mod evidence {
    use flow_stages::explain::{CamMethod, CamTarget};
    use flow_stages::ports::tensors::Normalize;
    use serde_json::json;
    use tch::Device;

    use crate::data::{self, BatchReq, Dataset};
    use crate::run::run_spec;
    use crate::testdata::{self, input, spec};
    use crate::train::Hooks;

    /// A model trained on fakes whose evidence (a checkerboard) sits in the top-left quadrant
    /// only must point there: the maps' maximum and most of their mass in that quadrant.
    #[test]
    fn maps_of_a_model_trained_on_quadrant_evidence_peak_in_that_quadrant() {
        let _g = crate::torch_serial();
        let tmp = tempfile::tempdir().unwrap();
        let s = testdata::make_in(tmp.path(), 96, 32, 2, Normalize::ImageNet, None, [0, 0, 16, 16]);
        let params = json!({"data": "preprocess", "split": "split",
                            "model": {"SimpleCnn": {"width": 8, "depth": 3}},
                            "epochs": 6, "lr": 3e-3, "batch_size": 8, "seed": 7, "device": "Cpu"});
        let ins = vec![
            input("data", "preprocess", None, &s.data),
            input("split", "split", None, &s.split),
        ];
        let tr = spec("Train", params, Some(0), tmp.path(), "train", ins);
        run_spec(&tr, &Hooks::default()).unwrap();
        let ds = Dataset::open(&s.data).unwrap();
        let (net, info) = crate::infer::load_model(&tr.out_dir, Device::Cpu, &ds, "train@fold0").unwrap();
        let fakes: Vec<usize> = s
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.fold == 0 && r.label == 1)
            .map(|(i, _)| i)
            .collect();
        let mask: Vec<u8> = (0..32 * 32)
            .map(|i| if i / 32 < 16 && i % 32 < 16 { 255 } else { 0 })
            .collect();
        let methods = [CamMethod::GradCam, CamMethod::GradCamPlusPlus, CamMethod::MultiScale];
        let mut hits = [0usize; 3];
        let mut energy = [0f64; 3];
        let req = vec![BatchReq {
            rows: fakes.clone(),
            seeds: None,
        }];
        data::prefetch(&ds, &info.normalize, None, req, |_, buf, n| {
            let x = data::batch_tensor(&buf[..n * 3 * 32 * 32], n, 32, Device::Cpu);
            let c = super::cams(&net, &x, 2, &methods, CamTarget::Fake)?;
            for (m, maps) in c.maps.iter().enumerate() {
                for j in 0..n {
                    let v = Vec::<f32>::try_from(maps.get(j as i64).view([-1])).unwrap();
                    let (e, h) = super::localise(&v, &mask);
                    energy[m] += e / n as f64;
                    hits[m] += usize::from(h);
                }
            }
            Ok(())
        })
        .unwrap();
        for (m, method) in methods.iter().enumerate() {
            let rate = hits[m] as f64 / fakes.len() as f64;
            assert!(
                rate >= 0.8,
                "{method:?}: maximum in the quadrant for {rate:.2} of fakes"
            );
            assert!(
                energy[m] > 0.5,
                "{method:?}: {:.2} of the mass in the quadrant (chance 0.25)",
                energy[m]
            );
        }
    }
}
