//! `gorae convert` (HF directory → GGUF) and `gorae quantize` (GGUF → GGUF in another type).
//!
//! Both write `OUT.part` and rename it to `OUT` only once every tensor is written and synced, so
//! an interrupted run never leaves a file that looks complete. Tensors are converted and written
//! one at a time (see `gorae_models::convert`), with a progress bar on stderr.

use anyhow::{Context, Result, bail};
use gorae_formats::gguf::GgufFile;
use gorae_formats::hf::load_hf_configs;
use gorae_formats::safetensors::SafetensorsModel;
use gorae_models::convert::{self, ConversionPlan, ConvertOptions, OutType};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

fn parse_type(name: &str) -> Result<OutType> {
    OutType::parse(name).with_context(|| {
        format!(
            "unknown output type `{name}` (one of: {}; q3_k/q4_k/q5_k mean the _m mixtures)",
            OutType::names().join(", ")
        )
    })
}

fn bar(total: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    let template = format!("{verb} {{bar:40}} {{bytes}}/{{total_bytes}} {{elapsed}} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// `OUT.part` next to `OUT`.
fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    out.with_file_name(name)
}

/// Runs `write` into `out.part`, then syncs and renames it to `out`; removes the part file on
/// failure.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(BufWriter<File>) -> Result<BufWriter<File>>,
) -> Result<()> {
    let part = part_path(out);
    let file = File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
    let result = write(BufWriter::with_capacity(8 << 20, file)).and_then(|w| {
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", part.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", part.display()))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, out)
        .with_context(|| format!("cannot rename {} to {}", part.display(), out.display()))
}

fn refuse_same_file(input: &Path, out: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), out.canonicalize())
        && a == b
    {
        bail!(
            "the output {} is the input; choose another path",
            out.display()
        );
    }
    Ok(())
}

/// `gorae convert HF_DIR OUT.gguf [--type T] [--legacy-mla]`.
pub fn convert(hf_dir: &Path, out: &Path, type_name: &str, legacy_mla: bool) -> Result<()> {
    let out_type = parse_type(type_name)?;
    if !hf_dir.is_dir() {
        bail!(
            "{} is not a directory (convert takes a Hugging Face model directory)",
            hf_dir.display()
        );
    }
    let configs = load_hf_configs(hf_dir)
        .with_context(|| format!("cannot read the model config in {}", hf_dir.display()))?;
    let st = SafetensorsModel::open(hf_dir).with_context(|| {
        format!(
            "cannot open the safetensors weights in {}",
            hf_dir.display()
        )
    })?;
    let name = hf_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let opts = ConvertOptions {
        out_type,
        legacy_mla,
        name,
    };
    let mut plan = ConversionPlan::from_hf(&configs.config, &st, &opts)
        .with_context(|| format!("cannot convert {}", hf_dir.display()))?;
    if hf_dir.join("tokenizer.json").exists() {
        let vocab_size = configs
            .config
            .get("vocab_size")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        let kv = gorae_text::gguf_export::gguf_tokenizer_metadata(hf_dir, vocab_size, None)
            .with_context(|| format!("cannot convert the tokenizer of {}", hf_dir.display()))?;
        for (k, v) in kv {
            plan.add_kv(k, v);
        }
    } else {
        eprintln!(
            "warning: {} has no tokenizer.json; the GGUF gets no tokenizer metadata",
            hf_dir.display()
        );
    }
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    let bar = bar(plan.total_bytes(), "converting");
    write_atomically(out, |w| {
        let w = plan
            .write(&st, w, &mut |t| {
                bar.inc(t.ty.bytes_for(t.n_elements() as u64).unwrap_or(0));
                bar.set_message(t.name.clone());
            })
            .with_context(|| format!("cannot convert {}", hf_dir.display()))?;
        Ok(w)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {:.1} MiB of weights, {out_type})",
        out.display(),
        plan.tensors.len(),
        plan.total_bytes() as f64 / (1u64 << 20) as f64
    );
    Ok(())
}

/// `gorae quantize IN.gguf OUT.gguf --type T`.
pub fn quantize(input: &Path, out: &Path, type_name: &str) -> Result<()> {
    let out_type = parse_type(type_name)?;
    refuse_same_file(input, out)?;
    let file = GgufFile::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let plan = convert::requantize_plan(&file, out_type)
        .with_context(|| format!("cannot quantize {}", input.display()))?;
    let total: u64 = plan
        .iter()
        .map(|t| {
            t.to.bytes_for(t.shape.iter().product::<usize>() as u64)
                .unwrap_or(0)
        })
        .sum();
    let changed = plan.iter().filter(|t| t.from != t.to).count();
    let bar = bar(total, "quantizing");
    write_atomically(out, |w| {
        let mut w = convert::requantize(&file, out_type, w, &mut |t| {
            bar.inc(
                t.to.bytes_for(t.shape.iter().product::<usize>() as u64)
                    .unwrap_or(0),
            );
            bar.set_message(t.name.clone());
        })
        .with_context(|| format!("cannot quantize {}", input.display()))?;
        w.flush()?;
        Ok(w)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {changed} converted, {:.1} MiB of weights, {out_type})",
        out.display(),
        plan.len(),
        total as f64 / (1u64 << 20) as f64
    );
    Ok(())
}
