//! The automatic thread count follows the CPU other processes leave (src/cpu_budget.rs): busy
//! processes on all cores but one bring it to 1, and it returns to the ceiling once they end.
//! Alone in its test binary, so no other test of this process adds load or changes the count.

use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The count after looks at the load over `within`, as soon as it is `wanted`.
fn count_reaches(wanted: i32, within: Duration) -> i32 {
    let start = Instant::now();
    loop {
        sleep(Duration::from_millis(300));
        let n = adpo::runtime::num_threads();
        if n == wanted || start.elapsed() > within {
            return n;
        }
    }
}

fn busy_loop() -> Child {
    Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("sh")
}

#[test]
fn busy_processes_lower_the_automatic_thread_count_and_it_recovers() {
    let ceiling = adpo::cpu_budget::ceiling(tch::get_num_threads());
    let cpus = std::thread::available_parallelism().unwrap().get();
    if ceiling < 2 || cpus < 2 {
        eprintln!("SKIP: libtorch may use {ceiling} thread(s) here: nothing to lower");
        return;
    }
    let mut loops: Vec<Child> = (1..cpus).map(|_| busy_loop()).collect();
    let loaded = count_reaches(1, Duration::from_secs(10));
    for l in &mut loops {
        l.kill().unwrap();
        l.wait().unwrap();
    }
    assert_eq!(loaded, 1, "{} busy processes on {cpus} CPUs", cpus - 1);
    let quiet = count_reaches(ceiling, Duration::from_secs(60));
    assert_eq!(quiet, ceiling, "after the busy processes ended");
}
