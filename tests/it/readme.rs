//! The README's walk-throughs, run as written against `meridian dev`: the first
//! commands a user types must not fail on the walk-through's own data.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command lines of the README's first `sh` block after `heading` (and after
/// `then`, when given), comments and blank lines left out and lines ending in `\`
/// joined with the next, as the shell joins them.
fn shell_block(heading: &str, then: Option<&str>) -> Vec<String> {
    let readme = std::fs::read_to_string(crate::plugins::repo_root().join("README.md"))
        .expect("README.md beside tests/");
    shell_block_in(&readme, heading, then)
}

fn shell_block_in(readme: &str, heading: &str, then: Option<&str>) -> Vec<String> {
    let mut section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has no `{heading}`"));
    if let Some(then) = then {
        section = section
            .split(then)
            .nth(1)
            .unwrap_or_else(|| panic!("no `{then}` under `{heading}`"));
    }
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no sh block under `{heading}`"));
    let mut lines: Vec<String> = Vec::new();
    let mut continued = false;
    for line in block.lines().map(str::trim) {
        if continued {
            let last = lines.last_mut().expect("a line to continue");
            last.pop();
            last.truncate(last.trim_end().len());
            last.push(' ');
            last.push_str(line);
        } else if !line.is_empty() && !line.starts_with('#') {
            lines.push(line.to_owned());
        } else {
            continue;
        }
        continued = line.ends_with('\\');
    }
    lines
}

/// Whether a line runs until it is stopped (a tail, a group member), as the README
/// says of them.
fn runs_until_stopped(line: &str) -> bool {
    line.contains("--follow") || line.contains("--group")
}

/// A `meridian dev` in a directory of its own, killed however the test ends (a
/// broker left running would hold the test harness's output open).
struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    /// What a CLI run from elsewhere needs to reach it.
    env: Vec<(&'static str, String)>,
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let (child, banner) = crate::cli::start_dev(dir.path(), &["--listen", "127.0.0.1:0"]);
        let after = |label: &str| {
            banner
                .split(label)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no `{label}` in {banner}"))
                .to_owned()
        };
        let env = vec![
            ("MERIDIAN_BOOTSTRAP", after(" listening on ")),
            ("MERIDIAN_FINGERPRINT", after("fingerprint: ")),
        ];
        Dev { child, dir, env }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs each line with `sh` in `cwd`, in turn, in a process group of its own, with
/// the `meridian` binary first on its path and `env` set; each must succeed (or, if
/// it runs until stopped, still be running after a few seconds, when it is sent
/// SIGTERM). Returns each line with what it printed.
fn run_lines(
    lines: &[String],
    cwd: &Path,
    env: &[(&'static str, String)],
) -> Vec<(String, String)> {
    let bin_dir = crate::harness::meridian_bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let logs = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let out_path = logs.path().join(format!("{n}.out"));
        let err_path = logs.path().join(format!("{n}.err"));
        let mut child = Command::new("sh")
            .args(["-c", line])
            .env("PATH", &path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let printed = || {
            let out = std::fs::read_to_string(&out_path).unwrap();
            let err = std::fs::read_to_string(&err_path).unwrap();
            (out, err)
        };
        let within = if runs_until_stopped(line) { 3 } else { 120 };
        match crate::harness::wait_for_exit(&mut child, Duration::from_secs(within)) {
            Some(status) => {
                let (out, err) = printed();
                assert!(status.success(), "`{line}` failed: {status}\n{out}{err}");
            }
            None => {
                stop_group(&mut child);
                let (out, err) = printed();
                assert!(
                    runs_until_stopped(line),
                    "`{line}` still running after {within} s\n{out}{err}"
                );
            }
        }
        outputs.push((line.clone(), printed().0));
    }
    outputs
}

/// SIGTERM to every process of `child`'s group (a pipeline's too), then waits until
/// none is left, so that a group member has committed and left before the next line.
fn stop_group(child: &mut Child) {
    use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
    let group = Pid::from_child(child);
    kill_process_group(group, Signal::TERM).expect("SIGTERM to the line's process group");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while test_kill_process_group(group).is_ok() {
        assert!(Instant::now() < deadline, "line's processes still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the line starting with `prefix` printed.
fn output_of<'a>(outputs: &'a [(String, String)], prefix: &str) -> &'a str {
    outputs
        .iter()
        .find(|(line, _)| line.starts_with(prefix))
        .map(|(_, out)| out.as_str())
        .unwrap_or_else(|| panic!("no line `{prefix}`"))
}

#[test]
fn shell_blocks_are_read_as_the_shell_reads_them() {
    let readme = "# A\n```sh\nnot this\n```\n## B\ntext\n```sh\n# a comment\n\n\
                  echo one   # said\n  printf '%s' \\\n    two \\\n    three\necho four\n```\n";
    assert_eq!(
        shell_block_in(readme, "## B", None),
        ["echo one   # said", "printf '%s' two three", "echo four"]
    );
}

#[test]
fn the_five_minute_tour_runs_as_written() {
    let lines = shell_block("## A five-minute tour", None);
    assert!(lines.len() > 20, "{lines:?}");
    let dev = Dev::start();
    // In the broker's directory, where the CLI finds its certificate by itself.
    let outputs = run_lines(&lines, dev.dir.path(), &dev.env[..1]);
    let earliest = output_of(&outputs, "meridian consume orders --from earliest");
    for value in ["book", "lamp", "pen", "refund"] {
        assert!(earliest.lines().any(|l| l == value), "{earliest}");
    }
    let truncated = output_of(&outputs, "meridian topic truncate-before");
    assert!(truncated.contains("log start offset 1"), "{truncated}");
}

#[test]
fn the_plugin_walk_through_runs_as_written() {
    let lines = shell_block("## WebAssembly plugins", Some("On the broker"));
    assert!(lines[0].starts_with("meridian plugin build"), "{lines:?}");
    let dev = Dev::start();
    let outputs = run_lines(&lines, &crate::plugins::repo_root(), &dev.env);
    let kept = output_of(&outputs, "meridian consume payments --from");
    assert_eq!(
        kept,
        "{\"customer\":{\"name\":\"[REDACTED]\"},\"total\":150}\n"
    );
    let dead = output_of(&outputs, "meridian consume payments-dlq");
    assert_eq!(dead, "not json\n");
}
