//! Single-thread preprocessing throughput: decode → centre crop → resize → ImageNet-normalised
//! CHW f32, the Rust counterpart of torchvision's
//! `Resize(size) / CenterCrop(size) / ToTensor() / Normalize(mean, std)` on PIL images.
//!
//! ```text
//! cargo run --release -p flow-stages --example preprocess_bench -- DIR SIZE \
//!     [--filter bilinear|catmullrom|lanczos3] [--crop center|letterbox] [--min-secs S] \
//!     [--dump FILE --dump-count K] [--limit N]
//! ```
//!
//! All files of DIR (sorted by name) are read into memory first, so only decode + transform is
//! timed. Prints one line of JSON. `--dump` writes the first K output tensors (f32 LE, CHW) for
//! a numerical comparison with the Python pipeline. Throughput is per CPU-second of this
//! process (`CLOCK_PROCESS_CPUTIME_ID`), i.e. per core, robust to other load on the machine.

use std::time::Instant;

/// CPU time of this process in seconds: the per-core figure, robust to other load on the box.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_PROCESS_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

use flow_stages::data::imageops::{self, Crop, Filter};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: preprocess_bench DIR SIZE [--filter bilinear|catmullrom|lanczos3] \
                 [--crop center|letterbox] [--min-secs S] [--dump FILE --dump-count K] [--limit N]";
    if args.len() < 2 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let dir = &args[0];
    let size: u32 = args[1].parse().expect("SIZE must be an integer");
    let mut filter = Filter::Bilinear; // torchvision's default interpolation
    let mut crop = Crop::Center;
    let mut min_secs = 3.0f64;
    let mut dump: Option<String> = None;
    let mut dump_count = 16usize;
    let mut limit = usize::MAX;
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value")).clone();
        match a.as_str() {
            "--filter" => {
                filter = match val().as_str() {
                    "bilinear" => Filter::Bilinear,
                    "catmullrom" | "bicubic" => Filter::CatmullRom,
                    "lanczos3" | "lanczos" => Filter::Lanczos3,
                    other => panic!("unknown filter {other}"),
                }
            }
            "--crop" => {
                crop = match val().as_str() {
                    "center" => Crop::Center,
                    "letterbox" => Crop::Letterbox,
                    other => panic!("unknown crop {other}"),
                }
            }
            "--min-secs" => min_secs = val().parse().expect("--min-secs"),
            "--dump" => dump = Some(val()),
            "--dump-count" => dump_count = val().parse().expect("--dump-count"),
            "--limit" => limit = val().parse().expect("--limit"),
            other => panic!("unknown argument {other}\n{usage}"),
        }
    }

    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.truncate(limit);
    let files: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!files.is_empty(), "{dir} has no files");
    let mb: f64 = files.iter().map(|f| f.len() as f64).sum::<f64>() / 1e6;

    // (v / 255 - mean) / std for each channel and byte value.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, x) in table.iter_mut().enumerate() {
            *x = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let hw = (size * size) as usize;
    let mut hwc = vec![0u8; hw * 3];
    let mut chw = vec![0f32; hw * 3];
    let mut checksum = 0f64;

    let mut one = |bytes: &[u8], hwc: &mut [u8], chw: &mut [f32]| {
        imageops::process_into(bytes, size, crop, filter, hwc).expect("decode");
        let (r, rest) = chw.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        for (i, p) in hwc.chunks_exact(3).enumerate() {
            r[i] = lut[0][p[0] as usize];
            g[i] = lut[1][p[1] as usize];
            b[i] = lut[2][p[2] as usize];
        }
        checksum += chw[hw / 2] as f64;
    };

    if let Some(path) = &dump {
        let mut out = Vec::new();
        for bytes in files.iter().take(dump_count) {
            one(bytes, &mut hwc, &mut chw);
            out.extend(chw.iter().flat_map(|v| v.to_le_bytes()));
        }
        std::fs::write(path, out).unwrap();
    }

    // Warm-up pass (page faults, thread-local buffers, resizer coefficients), then timed passes.
    for bytes in &files {
        one(bytes, &mut hwc, &mut chw);
    }
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let mut n = 0usize;
    while n == 0 || cpu_secs() - cpu0 < min_secs {
        for bytes in &files {
            one(bytes, &mut hwc, &mut chw);
        }
        n += files.len();
    }
    let wall = start.elapsed().as_secs_f64();
    let total = cpu_secs() - cpu0;

    // Decode-only figure for the breakdown.
    let start = cpu_secs();
    let mut nd = 0usize;
    while nd == 0 || cpu_secs() - start < min_secs / 3.0 {
        for bytes in &files {
            std::hint::black_box(imageops::decode(bytes).expect("decode"));
        }
        nd += files.len();
    }
    let dec = cpu_secs() - start;

    // Crop + resize only, on already decoded images (first 100).
    let decoded: Vec<_> = files
        .iter()
        .take(100)
        .map(|b| imageops::decode(b).expect("decode"))
        .collect();
    let start = cpu_secs();
    let mut nr = 0usize;
    while nr == 0 || cpu_secs() - start < min_secs / 3.0 {
        for d in &decoded {
            imageops::to_square_into(d, size, crop, filter, &mut hwc);
            std::hint::black_box(&hwc);
        }
        nr += decoded.len();
    }
    let rsz = cpu_secs() - start;

    println!(
        "{{\"impl\": \"rust\", \"files\": {}, \"input_mb\": {:.2}, \"size\": {size}, \"filter\": \"{filter:?}\", \
         \"crop\": \"{crop:?}\", \"images\": {n}, \"cpu_seconds\": {total:.3}, \"wall_seconds\": {wall:.3}, \
         \"images_per_cpu_s\": {:.1}, \"cpu_us_per_image\": {:.1}, \"decode_only_cpu_us\": {:.1}, \
         \"resize_only_cpu_us\": {:.1}, \"checksum\": {checksum:.3}}}",
        files.len(),
        mb,
        n as f64 / total,
        total / n as f64 * 1e6,
        dec / nd as f64 * 1e6,
        rsz / nr as f64 * 1e6,
    );
}
