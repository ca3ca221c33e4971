//! The thread count set through the C ABI holds on every host thread that calls adpo, also on
//! one that ran libtorch before it was set (libtorch keeps the count per OS thread).

use adpo::ffi::objective::adpo_objective_new;
use std::sync::mpsc;

#[test]
fn a_count_set_on_one_thread_applies_on_another_that_ran_libtorch_before() {
    let default = tch::get_num_threads();
    let wanted = default + 1;
    let (go, wait) = mpsc::channel::<()>();
    let (answer, result) = mpsc::channel::<i32>();
    let other = std::thread::spawn(move || {
        let _ =
            tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu)).sum(tch::Kind::Float);
        answer.send(tch::get_num_threads()).unwrap();
        wait.recv().unwrap();
        // Any adpo call: this one fails (NULL config), which is beside the point.
        let _ = adpo_objective_new(std::ptr::null(), std::ptr::null_mut(), std::ptr::null_mut());
        answer.send(tch::get_num_threads()).unwrap();
    });
    assert_eq!(result.recv().unwrap(), default);
    assert_eq!(adpo::runtime::set_num_threads(wanted), Ok(()));
    go.send(()).unwrap();
    assert_eq!(
        result.recv().unwrap(),
        wanted,
        "the other thread kept libtorch's old count"
    );
    other.join().unwrap();
    adpo::runtime::set_num_threads(default).unwrap();
}
