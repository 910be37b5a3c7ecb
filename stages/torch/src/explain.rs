//! `Explain` in the worker: fold k's model explains fold k's held-out items
//! (`flow_stages::explain` has the semantics, `crate::cam` the maps).
//!
//! 1. The fold model scores every held-out item (P(fake), Identity view);
//! 2. `flow_stages::explain::select` picks the gallery (cells, hard examples, named items);
//! 3. maps for the gallery and for every held-out item with a mask, in batches;
//! 4. outputs: `maps.npy` and overlays of the gallery, localisation of the masked items,
//!    `explain.json` (`flow_stages::ports::explanations`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use flow_stages::explain::{select, CamMethod, Candidate, Explain, Why};
use flow_stages::model::Tta;
use flow_stages::ports::explanations::{self as ports, ExplainDoc, ExplainedItem, Loc, LocRow, LocSummary, Outcome};
use flow_stages::worker::WorkerSpec;
use tch::Device;

use crate::cam::{self, localise};
use crate::data::{self, BatchReq, Dataset, Item};
use crate::infer::load_model;
use crate::run::{device_name, find_input, pick_device};
use crate::train::predict;
use crate::util::{self, log, progress, sigmoid, Res};

/// Items per explained batch unless the stage says otherwise.
const BATCH: usize = 32;

pub fn run_explain(spec: &WorkerSpec, p: &Explain) -> Res<()> {
    let t0 = Instant::now();
    let k = spec.fold.ok_or("Explain runs one instance per fold")?;
    let device = pick_device(p.device)?;
    let ds = Dataset::open(&find_input(spec, "data", None)?.dir)?;
    let folds = data::read_folds(&find_input(spec, "split", None)?.dir)?;
    for name in &p.items {
        if !folds.iter().any(|f| &f.item == name) {
            return Err(format!("`items` names `{name}`, which is not an item of the split"));
        }
    }
    let items = data::join(&ds, &folds)?;
    let m_in = find_input(spec, "models", Some(k))?;
    if m_in.fold != Some(k) {
        return Err(format!(
            "`{}` is not a per-fold model stage (Explain needs fold {k}'s model)",
            m_in.from
        ));
    }
    let (net, info) = load_model(&m_in.dir, device, &ds, &m_in.from)?;
    if let Some((_, m)) = p.model_problems(&info.model).into_iter().next() {
        return Err(format!("{m} (the model of `{}`)", m_in.from));
    }
    let layers = info.model.cam_layers().unwrap_or_default();
    let li = p.layer_index(&layers)?;
    let bs = p.batch_size.unwrap_or(BATCH);

    let held: Vec<&Item> = items.iter().filter(|i| i.split.fold == k).collect();
    let rows: Vec<usize> = held.iter().map(|i| i.row).collect();
    let scores: Vec<f64> = predict(&net, &ds, &info.normalize, &rows, bs, device, &[Tta::Identity])?
        .into_iter()
        .map(sigmoid)
        .collect();
    let cands: Vec<Candidate> = held
        .iter()
        .zip(&scores)
        .map(|(i, &score)| Candidate {
            item: i.item.clone(),
            label: i.label,
            source: i.source.clone(),
            score,
        })
        .collect();
    let chosen = select(&cands, p);
    let masks = MaskSet::open(&ds)?;
    // The gallery first, then the masked items not in it.
    let mut work: Vec<usize> = chosen.iter().map(|(i, _)| *i).collect();
    let in_gallery: std::collections::HashSet<usize> = work.iter().copied().collect();
    work.extend((0..held.len()).filter(|&i| masks.get(held[i].row).is_some() && !in_gallery.contains(&i)));
    progress(
        0.05,
        format!("fold {k}: {} held-out items, explaining {}", held.len(), work.len()),
    );

    let maps = compute_maps(&net, &ds, &info.normalize, &held, &work, p, li, bs, device)?;
    let out = &spec.out_dir;
    let gallery = write_gallery(out, &ds, &held, &cands, &chosen, &maps, &masks, p)?;
    let loc_rows = localisation_rows(&held, &cands, &work, &maps, &masks, p);
    ports::write_localisation(out, &loc_rows)?;
    let doc = ExplainDoc {
        fold: k,
        from: m_in.from.clone(),
        model: info.model_name.clone(),
        layer: layers.get(li).cloned().unwrap_or_default(),
        layers,
        methods: p.methods.clone(),
        target: p.target,
        threshold: p.threshold,
        size: ds.size as u32,
        held_out: held.len(),
        masked: (0..held.len()).filter(|&i| masks.get(held[i].row).is_some()).count(),
        items: gallery,
        localisation: summarise(&loc_rows, &p.methods),
    };
    doc.write(out)?;
    let seconds = t0.elapsed().as_secs_f64();
    util::meta_event(serde_json::json!({
        "device": device_name(device),
        "threads": tch::get_num_threads(),
        "seconds": seconds,
        "explained": work.len(),
    }));
    log(format!(
        "Explain fold {k}: {} items explained ({} in the gallery) with {:?}, {seconds:.1} s",
        work.len(),
        chosen.len(),
        p.methods
    ));
    Ok(())
}

/// The dataset's manipulation masks by row (none when the data has none).
struct MaskSet {
    rows: BTreeMap<usize, (Vec<u8>, f64)>,
}

impl MaskSet {
    fn open(_ds: &Dataset) -> Res<MaskSet> {
        Ok(MaskSet { rows: BTreeMap::new() })
    }
    fn get(&self, row: usize) -> Option<&(Vec<u8>, f64)> {
        self.rows.get(&row)
    }
}

/// Maps of `work` (indices into `held`), per method, each `size²` f32 in `[0, 1]`.
#[allow(clippy::too_many_arguments)]
fn compute_maps(
    net: &crate::nets::Net,
    ds: &Dataset,
    norm: &data::Norm,
    held: &[&Item],
    work: &[usize],
    p: &Explain,
    layer: usize,
    bs: usize,
    device: Device,
) -> Res<Vec<Vec<Vec<f32>>>> {
    let s = ds.size as i64;
    let per = (3 * s * s) as usize;
    let reqs: Vec<BatchReq> = work
        .chunks(bs.max(1))
        .map(|c| BatchReq {
            rows: c.iter().map(|&i| held[i].row).collect(),
            seeds: None,
        })
        .collect();
    let batches = reqs.len().max(1);
    let mut out: Vec<Vec<Vec<f32>>> = Vec::with_capacity(work.len());
    data::prefetch(ds, norm, None, reqs, |b, buf, n| {
        let x = data::batch_tensor(&buf[..n * per], n, s, device);
        let c = cam::cams(net, &x, layer, &p.methods, p.target)?;
        for j in 0..n {
            let per_method: Res<Vec<Vec<f32>>> = c
                .maps
                .iter()
                .map(|m| Vec::<f32>::try_from(m.get(j as i64).view([-1])).map_err(|e| e.to_string()))
                .collect();
            out.push(per_method?);
        }
        progress(
            0.1 + 0.8 * (b + 1) as f64 / batches as f64,
            format!("{} of {} items", out.len(), work.len()),
        );
        Ok(())
    })?;
    Ok(out)
}

fn method_dir(m: CamMethod) -> &'static str {
    match m {
        CamMethod::GradCam => "gradcam",
        CamMethod::GradCamPlusPlus => "gradcampp",
        CamMethod::MultiScale => "multiscale",
        CamMethod::Attention => "attention",
    }
}

/// Writes `maps.npy` and the overlays of the gallery (the first `chosen.len()` of `maps`);
/// returns its `explain.json` entries.
#[allow(clippy::too_many_arguments)]
fn write_gallery(
    out: &Path,
    ds: &Dataset,
    held: &[&Item],
    cands: &[Candidate],
    chosen: &[(usize, Why)],
    maps: &[Vec<Vec<f32>>],
    masks: &MaskSet,
    p: &Explain,
) -> Res<Vec<ExplainedItem>> {
    let s = ds.size;
    let mut npy = Vec::with_capacity(chosen.len() * p.methods.len() * s * s);
    let mut items = Vec::with_capacity(chosen.len());
    for m in &p.methods {
        let d = out.join(ports::OVERLAYS).join(method_dir(*m));
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    for (n, ((i, why), per_method)) in chosen.iter().zip(maps).enumerate() {
        let c = &cands[*i];
        let mask = masks.get(held[*i].row);
        let mut overlays = Vec::new();
        let mut loc = Vec::new();
        for (m, map) in p.methods.iter().zip(per_method) {
            npy.extend(map.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
            let rel = format!("{}/{}/{n:04}.png", ports::OVERLAYS, method_dir(*m));
            write_overlay(&out.join(&rel), ds.pixels(held[*i].row), map, s)?;
            overlays.push(rel);
            if let Some((mk, _)) = mask {
                let (energy, hit) = localise(map, mk);
                loc.push(Loc { energy, hit });
            }
        }
        items.push(ExplainedItem {
            item: c.item.clone(),
            label: c.label,
            source: c.source.clone(),
            score: round6(c.score),
            outcome: Outcome::of(c.label, c.score, p.threshold),
            cell: why.cell,
            hard: why.hard,
            requested: why.requested,
            mask_area: mask.map(|(_, a)| round6(*a)),
            overlays,
            localisation: loc,
        });
    }
    ports::write_npy_u8(&out.join(ports::MAPS), &[chosen.len(), p.methods.len(), s, s], &npy)?;
    Ok(items)
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Image | overlay | map, each panel scaled up (nearest) to at least 128 px.
fn write_overlay(path: &Path, rgb: &[u8], map: &[f32], s: usize) -> Res<()> {
    let f = (128 / s).max(1);
    let side = s * f;
    let mut img = image::RgbImage::new((3 * side) as u32, side as u32);
    for y in 0..side {
        for x in 0..side {
            let (sy, sx) = (y / f, x / f);
            let px = &rgb[(sy * s + sx) * 3..(sy * s + sx) * 3 + 3];
            let v = f64::from(map[sy * s + sx]);
            let c = flow_stages::spectrum::viridis(v);
            let a = 0.5;
            let blend: [u8; 3] =
                std::array::from_fn(|i| (f64::from(px[i]) * (1.0 - a) + f64::from(c[i]) * a).round() as u8);
            img.put_pixel(x as u32, y as u32, image::Rgb([px[0], px[1], px[2]]));
            img.put_pixel((side + x) as u32, y as u32, image::Rgb(blend));
            img.put_pixel((2 * side + x) as u32, y as u32, image::Rgb(c));
        }
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One row per masked item of `work` and method.
fn localisation_rows(
    held: &[&Item],
    cands: &[Candidate],
    work: &[usize],
    maps: &[Vec<Vec<f32>>],
    masks: &MaskSet,
    p: &Explain,
) -> Vec<LocRow> {
    let mut rows = Vec::new();
    for (&i, per_method) in work.iter().zip(maps) {
        let Some((mk, area)) = masks.get(held[i].row) else {
            continue;
        };
        let chance_hit = mk.iter().filter(|&&m| m >= 128).count() as f64 / mk.len().max(1) as f64;
        for (m, map) in p.methods.iter().zip(per_method) {
            let (energy, hit) = localise(map, mk);
            rows.push(LocRow {
                item: cands[i].item.clone(),
                label: cands[i].label,
                source: cands[i].source.clone(),
                score: cands[i].score,
                method: *m,
                energy,
                hit: u8::from(hit),
                area: *area,
                chance_hit,
            });
        }
    }
    rows.sort_by(|a, b| a.item.cmp(&b.item).then((a.method as u8).cmp(&(b.method as u8))));
    rows
}

/// Mean energy, hit rate and their chance levels per method × source, and pooled ("all").
pub fn summarise(rows: &[LocRow], methods: &[CamMethod]) -> Vec<LocSummary> {
    let mut out = Vec::new();
    for m in methods {
        let of_m: Vec<&LocRow> = rows.iter().filter(|r| r.method == *m).collect();
        let mut sources: Vec<&str> = of_m.iter().map(|r| r.source.as_str()).collect();
        sources.sort();
        sources.dedup();
        for src in sources.into_iter().map(Some).chain([None]) {
            let sel: Vec<&&LocRow> = of_m.iter().filter(|r| src.is_none_or(|s| r.source == s)).collect();
            if sel.is_empty() {
                continue;
            }
            let n = sel.len() as f64;
            let mean = |f: &dyn Fn(&LocRow) -> f64| round6(sel.iter().map(|r| f(r)).sum::<f64>() / n);
            out.push(LocSummary {
                method: *m,
                source: src.unwrap_or("all").to_string(),
                n: sel.len(),
                energy: mean(&|r| r.energy),
                hit_rate: mean(&|r| f64::from(r.hit)),
                area: mean(&|r| r.area),
                chance_hit: mean(&|r| r.chance_hit),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use flow_stages::ports::explanations::{read_npy_u8, ExplainDoc, MAPS};
    use flow_stages::ports::tensors::Normalize;
    use serde_json::json;

    use crate::run::run_spec;
    use crate::testdata::{self, input, spec, train_params};
    use crate::train::Hooks;

    #[test]
    fn explain_writes_the_gallery_maps_and_doc_of_its_fold() {
        let _g = crate::torch_serial();
        let tmp = tempfile::tempdir().unwrap();
        let s = testdata::make(tmp.path(), 40, 32, 2, Normalize::ImageNet, None);
        let ins = || {
            vec![
                input("data", "preprocess", None, &s.data),
                input("split", "split", None, &s.split),
            ]
        };
        let tr = spec("Train", train_params(2), Some(0), tmp.path(), "train", ins());
        run_spec(&tr, &Hooks::default()).unwrap();
        let params = |items: serde_json::Value| {
            json!({"models": "train", "data": "preprocess", "split": "split", "per_cell": 3, "hard": 2,
                   "items": items, "device": "Cpu"})
        };
        let mut inputs = ins();
        inputs.push(input("models", "train@fold0", Some(0), &tr.out_dir));
        let ex = spec(
            "Explain",
            params(json!(["item001"])),
            Some(0),
            tmp.path(),
            "explain",
            inputs.clone(),
        );
        run_spec(&ex, &Hooks::default()).unwrap();
        let doc = ExplainDoc::read(&ex.out_dir).unwrap();
        assert_eq!(doc.held_out, 20);
        assert_eq!(doc.layer, "features.2");
        assert!(doc.items.iter().any(|i| i.item == "item001" && i.requested));
        // Cells: at most 3 per outcome × source; every item held out in fold 0.
        let held: Vec<&str> = s.rows.iter().filter(|r| r.fold == 0).map(|r| r.item.as_str()).collect();
        assert!(doc.items.iter().all(|i| held.contains(&i.item.as_str())));
        let (shape, data) = read_npy_u8(&ex.out_dir.join(MAPS)).unwrap();
        assert_eq!(shape, vec![doc.items.len(), 3, 32, 32]);
        assert!(data.iter().any(|&v| v > 0));
        for i in &doc.items {
            assert_eq!(i.overlays.len(), 3);
            let img = image::open(ex.out_dir.join(&i.overlays[0])).unwrap();
            assert_eq!((img.width(), img.height()), (3 * 128, 128));
        }
        // Deterministic: a second run writes the same bytes.
        let ex2 = spec(
            "Explain",
            params(json!(["item001"])),
            Some(0),
            tmp.path(),
            "explain2",
            inputs.clone(),
        );
        run_spec(&ex2, &Hooks::default()).unwrap();
        for f in ["explain.json", "maps.npy", "localisation.csv"] {
            assert_eq!(
                std::fs::read(ex.out_dir.join(f)).unwrap(),
                std::fs::read(ex2.out_dir.join(f)).unwrap(),
                "{f}"
            );
        }
        // An item no fold holds is named.
        let bad = spec(
            "Explain",
            params(json!(["nope"])),
            Some(0),
            tmp.path(),
            "explain3",
            inputs,
        );
        let e = run_spec(&bad, &Hooks::default()).unwrap_err();
        assert!(e.contains("`nope`"), "{e}");
    }
}
