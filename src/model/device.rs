//! Device names as the C ABI takes them: "cpu", "cuda", "cuda:N".

use crate::error::{Error, Result};
use tch::Device;

/// Parses "cpu", "cuda", "cuda:N", and checks that the CUDA device exists.
pub fn parse_device(text: &str) -> Result<Device> {
    let text = text.trim();
    let device = match text {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match text
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => Device::Cuda(i),
            None => {
                return Err(Error::invalid(format!(
                    "device \"{}\" is not \"cpu\", \"cuda\" or \"cuda:N\"",
                    crate::echo::echo(text)
                )))
            }
        },
    };
    if let Device::Cuda(i) = device {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        if i as i64 >= count {
            return Err(Error::unsupported(format!(
                "device {text}: this machine has {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}
