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

/// The command line.
struct Args {
    dir: String,
    size: u32,
    filter: Filter,
    crop: Crop,
    min_secs: f64,
    dump: Option<String>,
    dump_count: usize,
    limit: usize,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = "usage: preprocess_bench DIR SIZE [--filter bilinear|catmullrom|lanczos3] \
                     [--crop center|letterbox] [--min-secs S] [--dump FILE --dump-count K] [--limit N]";
        if args.len() < 2 {
            eprintln!("{usage}");
            std::process::exit(2);
        }
        let mut a = Args {
            dir: args[0].clone(),
            size: args[1].parse().expect("SIZE must be an integer"),
            filter: Filter::Bilinear, // torchvision's default interpolation
            crop: Crop::Center,
            min_secs: 3.0,
            dump: None,
            dump_count: 16,
            limit: usize::MAX,
        };
        let mut it = args[2..].iter();
        while let Some(arg) = it.next() {
            let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value")).clone();
            match arg.as_str() {
                "--filter" => {
                    a.filter = match val().as_str() {
                        "bilinear" => Filter::Bilinear,
                        "catmullrom" | "bicubic" => Filter::CatmullRom,
                        "lanczos3" | "lanczos" => Filter::Lanczos3,
                        other => panic!("unknown filter {other}"),
                    }
                }
                "--crop" => {
                    a.crop = match val().as_str() {
                        "center" => Crop::Center,
                        "letterbox" => Crop::Letterbox,
                        other => panic!("unknown crop {other}"),
                    }
                }
                "--min-secs" => a.min_secs = val().parse().expect("--min-secs"),
                "--dump" => a.dump = Some(val()),
                "--dump-count" => a.dump_count = val().parse().expect("--dump-count"),
                "--limit" => a.limit = val().parse().expect("--limit"),
                other => panic!("unknown argument {other}\n{usage}"),
            }
        }
        a
    }
}

/// The files of `dir` (sorted by name, at most `limit`), in memory.
fn read_files(dir: &str, limit: usize) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.truncate(limit);
    let files: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!files.is_empty(), "{dir} has no files");
    files
}

/// The transform under test, with its reused buffers and a checksum of what it produced.
struct Transform {
    size: u32,
    crop: Crop,
    filter: Filter,
    /// (v / 255 - mean) / std for each channel and byte value.
    lut: [[f32; 256]; 3],
    hw: usize,
    hwc: Vec<u8>,
    chw: Vec<f32>,
    checksum: f64,
}

impl Transform {
    fn new(size: u32, crop: Crop, filter: Filter) -> Transform {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                *x = (v as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        let hw = (size * size) as usize;
        Transform {
            size,
            crop,
            filter,
            lut,
            hw,
            hwc: vec![0u8; hw * 3],
            chw: vec![0f32; hw * 3],
            checksum: 0f64,
        }
    }

    /// decode → square → resize → normalised CHW f32 (in `self.chw`).
    fn one(&mut self, bytes: &[u8]) {
        let hw = self.hw;
        imageops::process_into(bytes, self.size, self.crop, self.filter, &mut self.hwc).expect("decode");
        let (r, rest) = self.chw.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        for (i, p) in self.hwc.chunks_exact(3).enumerate() {
            r[i] = self.lut[0][p[0] as usize];
            g[i] = self.lut[1][p[1] as usize];
            b[i] = self.lut[2][p[2] as usize];
        }
        self.checksum += self.chw[hw / 2] as f64;
    }
}

/// Runs `pass` (which handles `per_pass` items) until at least `min_secs` of CPU time have
/// passed, at least once; the items done and the CPU seconds taken.
fn repeat_for(min_secs: f64, per_pass: usize, mut pass: impl FnMut()) -> (usize, f64) {
    let start = cpu_secs();
    let mut n = 0usize;
    while n == 0 || cpu_secs() - start < min_secs {
        pass();
        n += per_pass;
    }
    (n, cpu_secs() - start)
}

fn main() {
    let a = Args::parse();
    let files = read_files(&a.dir, a.limit);
    let mb: f64 = files.iter().map(|f| f.len() as f64).sum::<f64>() / 1e6;
    let (size, crop, filter, min_secs) = (a.size, a.crop, a.filter, a.min_secs);
    let mut t = Transform::new(size, crop, filter);

    if let Some(path) = &a.dump {
        let mut out = Vec::new();
        for bytes in files.iter().take(a.dump_count) {
            t.one(bytes);
            out.extend(t.chw.iter().flat_map(|v| v.to_le_bytes()));
        }
        std::fs::write(path, out).unwrap();
    }

    // Warm-up pass (page faults, thread-local buffers, resizer coefficients), then timed passes.
    for bytes in &files {
        t.one(bytes);
    }
    let start = Instant::now();
    let (n, total) = repeat_for(min_secs, files.len(), || {
        for bytes in &files {
            t.one(bytes);
        }
    });
    let wall = start.elapsed().as_secs_f64();

    // Decode-only figure for the breakdown.
    let (nd, dec) = repeat_for(min_secs / 3.0, files.len(), || {
        for bytes in &files {
            std::hint::black_box(imageops::decode(bytes).expect("decode"));
        }
    });

    // Crop + resize only, on already decoded images (first 100).
    let decoded: Vec<_> = files
        .iter()
        .take(100)
        .map(|b| imageops::decode(b).expect("decode"))
        .collect();
    let (nr, rsz) = repeat_for(min_secs / 3.0, decoded.len(), || {
        for d in &decoded {
            imageops::to_square_into(d, size, crop, filter, &mut t.hwc);
            std::hint::black_box(&t.hwc);
        }
    });

    let checksum = t.checksum;
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
