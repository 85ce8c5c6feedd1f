//! The `kiln` command line.

use clap::{Parser, Subcommand};
use kiln::build;
use kiln::children::{self, interrupt, reaper, ProcessGroup, Role};
use kiln::emulator::{self, Accel};
use kiln::harness;
use kiln::image::Image;
use kiln::lab::built::Built;
use kiln::lab::{labgrid_env, lava_job};
use kiln::progress;
use kiln_abi::error::Chain;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build, run and test appliance images whose PID 1 is the kiln VMM runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image; with no IMAGE, the built-in default appliance (hello).
    Build {
        /// An image config (images/*.toml).
        image: Option<PathBuf>,
        /// Output directory [default: out/<image name>]. Replaced only if
        /// it is empty or a kiln output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace the output directory even if kiln did not write it.
        #[arg(long)]
        force: bool,
        /// Print a machine-readable summary (the manifest) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List an image's contents and its manifest (an output DIR or an initramfs FILE).
    Inspect {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Boot an image on the emulated target, console on this terminal (Ctrl-C stops it).
    Run {
        /// An image config (built first) or a built output directory.
        image: Option<PathBuf>,
        /// QEMU accelerator: auto, tcg or kvm.
        #[arg(long, default_value = "auto")]
        accel: String,
    },
    /// Boot images on a target and judge every VM from the console; exit 0
    /// only if all pass, 1 if any fails, 2 on an infrastructure error.
    Test {
        /// Image configs (built first) or built output directories, tested in
        /// order; none: the built-in default appliance.
        images: Vec<PathBuf>,
        /// Write a JUnit XML report here; the whole console goes to FILE.console.log.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run each image N times, to find flaky results.
        #[arg(long, value_name = "N", default_value_t = 1)]
        repeat: u32,
        /// qemu (the emulated target), a lab file (PATH.toml, or NAME for
        /// labs/NAME.toml), or replay:LOG to judge a recorded console again.
        #[arg(long, default_value = "qemu")]
        target: String,
        /// QEMU accelerator: auto, tcg or kvm.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Limit for each run from power-on, e.g. "10m" [default: the boot
        /// timeout plus the longest VM timeout].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Limit from power-on to the first VM starting [default: the lab
        /// file's boot_timeout, else 120s].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        boot_timeout: Option<std::time::Duration>,
        /// Echo the console on stderr (the default when stderr is a terminal).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write a new image project into DIR: an image config, one VM config
    /// and its guest program (a cargo project), ready for `kiln test`.
    New {
        /// A new or empty directory.
        dir: PathBuf,
        /// The image's name [default: DIR's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Create a Secure Boot key set in DIR: PK, KEK and db keys (0600),
    /// certificates, and the signed .auth updates firmware enrolls.
    Keys {
        dir: PathBuf,
        /// The owner named in the certificates (CN=<NAME> PK, ...).
        #[arg(long, default_value = "kiln appliance owner")]
        name: String,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Another certificate (PEM or DER) to keep in db beside yours, e.g.
        /// Microsoft's UEFI CA for option ROMs; may be repeated.
        #[arg(long = "add-db", value_name = "CERT")]
        add_db: Vec<PathBuf>,
    },
    /// Write a LAVA job definition for a built image: deploy, boot, and a
    /// monitor per VM. Judge LAVA's log with `kiln test DIR --target replay:LOG`.
    LavaJob {
        /// A built image directory.
        dir: PathBuf,
        /// Write the job here [default: stdout].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The LAVA device type.
        #[arg(long, default_value = "qemu")]
        device_type: String,
        /// qemu, minimal (the board boots the disk image), or a bootloader
        /// method such as ipxe or grub [default: qemu for the device type
        /// qemu, else minimal].
        #[arg(long, value_name = "METHOD")]
        boot: Option<String>,
        /// The device's command set for a bootloader method.
        #[arg(long, value_name = "NAME", default_value = "ramdisk")]
        commands: String,
        /// Base URL the lab fetches the image's files from (the file names
        /// are appended) [default: file:// and DIR].
        #[arg(long, value_name = "URL")]
        artifacts: Option<String>,
        /// QEMU accelerator of the qemu method: tcg or kvm.
        #[arg(long, default_value = "tcg")]
        accel: String,
        /// The job's name [default: kiln <image>].
        #[arg(long, value_name = "NAME")]
        job_name: Option<String>,
        /// Limit from power-on to the first VM starting [default: 120s].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        boot_timeout: Option<std::time::Duration>,
    },
    /// Write a labgrid environment that boots a built image on the emulated
    /// target (QEMUDriver), for `pytest --lg-env` and `kiln test --target labgrid:FILE`.
    LabgridEnv {
        /// A built image directory.
        dir: PathBuf,
        /// Write the environment here [default: stdout].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// QEMU accelerator: tcg or kvm.
        #[arg(long, default_value = "tcg")]
        accel: String,
    },
    /// kiln's reaper (internal): kills what `kiln test` still runs when it dies.
    #[command(name = reaper::SUBCOMMAND, hide = true)]
    Reaper,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    kiln_schema::config::Duration::parse(text).map(|d| d.get())
}

fn parse_accel(accel: &str) -> Result<Accel, BoxError> {
    Ok(match accel {
        "auto" => Accel::detect(),
        "tcg" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        other => return Err(format!("--accel {other}: expected auto, tcg or kvm").into()),
    })
}

/// The accelerator of a machine elsewhere (a LAVA worker, a labgrid
/// environment): this host's cannot stand for it.
fn parse_lab_accel(accel: &str) -> Result<Accel, BoxError> {
    match accel {
        "tcg" => Ok(Accel::Tcg),
        "kvm" => Ok(Accel::Kvm),
        other => Err(format!(
            "--accel {other}: expected tcg or kvm (the lab's machine, not this host)"
        )
        .into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    // Every exit of kiln ends what it started (the targets have stopped
    // their children already; this is for any path that did not).
    children::kill_all();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", Chain::new(&*e).separator("\n  caused by: "));
            ExitCode::from(2)
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(cli: Cli) -> Result<ExitCode, BoxError> {
    match cli.command {
        Cmd::Build {
            image,
            output,
            force,
            json,
        } => {
            progress::set_quiet(json);
            let (image, out) = load_image(image.as_deref(), output)?;
            let replace = if force {
                build::Replace::AnyDirectory
            } else {
                build::Replace::KilnOutput
            };
            let built = build::build_with(&image, &out, replace)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&built.manifest)?);
            } else {
                print_summary(&built);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::New { dir, name } => {
            let created = kiln::new::create(&dir, name.as_deref())?;
            println!(
                "created the image project {} in {}; build and test it with:\n  kiln test {}",
                created.name,
                dir.display(),
                created.image.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { path, json } => {
            kiln::inspect::inspect(&path, json, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test {
            images,
            junit,
            repeat,
            target,
            accel,
            timeout,
            boot_timeout,
            verbose,
        } => {
            use std::io::IsTerminal;
            let opts = harness::Options {
                inputs: images,
                junit,
                repeat,
                target: harness::targets::TargetSpec::parse(&target, parse_accel(&accel)?),
                timeout,
                boot_timeout,
                echo: verbose || std::io::stderr().is_terminal(),
            };
            // Ctrl-C and SIGTERM stop the target in order and still write
            // the report (targets run in their own process groups); a
            // second one kills the target at once (see children::interrupt).
            let interrupted = interrupt::install()?;
            if let Err(e) = reaper::start() {
                progress::note(format!(
                    "cannot start kiln's reaper ({e}): if kiln is killed, what lab commands started may outlive it"
                ));
            }
            let report = harness::run(&opts, interrupted)?;
            print!(
                "{}",
                harness::report::summary(&report.runs, report.interrupted)
            );
            if let Some(j) = &report.junit {
                println!("JUnit report: {}", j.display());
            }
            for log in &report.logs {
                println!("console log: {}", log.display());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Cmd::Keys {
            dir,
            name,
            days,
            add_db,
        } => {
            let opts = kiln::secureboot::KeyOptions {
                name,
                days,
                extra_db: add_db,
            };
            kiln::secureboot::create_keys(&dir, &opts)?;
            println!(
                "Secure Boot keys in {0}: PK, KEK and db (.key 0600, .crt/.cer, .esl, .auth).\n\
                 Sign images with [output.signing] key = \"{0}/db.key\", cert = \"{0}/db.crt\";\n\
                 enroll db.auth, KEK.auth and PK.auth (last) on the machine: docs/outputs.md, \"Secure Boot\".\n\
                 Keep the .key files off the image and out of version control.",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LavaJob {
            dir,
            output,
            device_type,
            boot,
            commands,
            artifacts,
            accel,
            job_name,
            boot_timeout,
        } => {
            let built = Built::load(&dir)?;
            let opts = lava_job::JobOptions {
                boot: lava_job::BootMethod::parse(boot.as_deref(), &device_type, Some(&commands)),
                device_type,
                artifacts,
                accel: parse_lab_accel(&accel)?,
                job_name,
                boot_timeout,
            };
            write_out(output.as_deref(), &lava_job::write(&built, &opts)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LabgridEnv { dir, output, accel } => {
            let built = Built::load(&dir)?;
            write_out(
                output.as_deref(),
                &labgrid_env::write(&built, parse_lab_accel(&accel)?)?,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reaper => {
            reaper::serve(std::io::stdin().lock());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { image, accel } => {
            let accel = parse_accel(&accel)?;
            let qemu = emulator::find()?;
            let (dir, target) = match image.as_deref() {
                Some(p) if p.is_dir() => (p.to_path_buf(), target_of_dir(p)?),
                other => {
                    let (image, out) = load_image(other, None)?;
                    let built = build::build(&image, &out)?;
                    (built.out_dir, image.config.target.clone())
                }
            };
            let files = emulator::BootFiles::from_dir(&dir)?;
            let cmd = emulator::command(&qemu, &files, &target, accel);
            progress::note(format!(
                "booting {} on QEMU ({}); Ctrl-C stops it",
                dir.display(),
                accel.as_str()
            ));
            // QEMU stays in kiln's process group, the terminal's foreground
            // job: Ctrl-C reaches QEMU, which stops, and kiln, which stays to
            // report and make sure (SIGTERM reaches kiln alone). QEMU dies
            // with kiln whatever kills it.
            let interrupted = interrupt::install()?;
            let mut child = children::spawn(cmd, ProcessGroup::Kiln, Role::Work)?;
            let status = loop {
                if let Some(s) = child.try_wait()? {
                    break Some(s);
                }
                if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                    // QEMU saves nothing worth waiting long for.
                    child.stop(std::time::Duration::from_millis(500));
                    break None;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                progress::note("interrupted; QEMU stopped");
                return Ok(ExitCode::from(130));
            }
            Ok(if status.is_some_and(|s| s.success()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Writes `text` to `path`, or to stdout.
fn write_out(path: Option<&Path>, text: &str) -> Result<(), BoxError> {
    match path {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()).into())
        }
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

/// Loads IMAGE (or the built-in default) and picks its output directory.
fn load_image(image: Option<&Path>, output: Option<PathBuf>) -> Result<(Image, PathBuf), BoxError> {
    let image = match image {
        Some(p) => Image::load(p)?,
        None => {
            progress::note("no IMAGE given: building the built-in default appliance (hello)");
            Image::load_default()?
        }
    };
    let out = output.unwrap_or_else(|| Path::new("out").join(&image.config.name));
    Ok((image, out))
}

/// The target section of a built image, from the image config its manifest
/// names when it is still there, else the defaults.
fn target_of_dir(dir: &Path) -> Result<kiln::image::TargetSection, BoxError> {
    let manifest: kiln::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    Ok(manifest.target.unwrap_or_default())
}

fn print_summary(built: &build::Built) {
    let m = &built.manifest;
    println!("built {} in {}", m.name, built.out_dir.display());
    for a in &m.artifacts {
        println!(
            "  {:<24} {:>10}  sha256:{}",
            a.file,
            progress::human_bytes(a.size),
            &a.sha256[..16]
        );
    }
    println!(
        "  kernel {}; {} modules; {} payloads",
        m.kernel.release,
        m.modules.len(),
        m.payloads.len()
    );
}
