//! Instruction-set selection: a supported ISA must never be left unused, and CI can demand
//! ISAs with `BAREMETAL_REQUIRE_ISA=avx512,avx2`.

use generated::{Isa, Kernels};

#[test]
fn detect_picks_the_best_supported_isa() {
    assert_eq!(Kernels::detect().isa(), Isa::best());
    assert!(Isa::best().is_supported());
}

#[test]
fn for_isa_succeeds_exactly_when_the_cpu_supports_it() {
    for &isa in Isa::all() {
        let kernels = Kernels::for_isa(isa);
        assert_eq!(kernels.is_some(), isa.is_supported(), "{isa}");
        if let Some(k) = kernels {
            assert_eq!(k.isa(), isa);
        }
    }
    assert!(Isa::Portable.is_supported());
}

#[test]
fn every_supported_int8_isa_has_generated_kernels() {
    for &isa in generated::Int8Isa::all() {
        let kernels = generated::Int8Kernels::for_isa(isa);
        assert_eq!(kernels.is_some(), isa.is_supported(), "{isa}");
        if let Some(k) = kernels {
            assert_eq!(k.isa(), isa);
        }
    }
}

#[test]
fn best_is_the_preferred_supported_isa() {
    // Nothing better than the chosen ISA is supported.
    let order = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable];
    let best = order.iter().position(|&i| i == Isa::best()).unwrap();
    for isa in &order[..best] {
        assert!(
            !isa.is_supported(),
            "{isa} is supported but {} was chosen",
            Isa::best()
        );
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(Isa::best(), Isa::Neon);
}

#[test]
fn required_isas_are_supported() {
    let Ok(list) = std::env::var("BAREMETAL_REQUIRE_ISA") else {
        return;
    };
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let isa: Isa = name
            .parse()
            .unwrap_or_else(|e| panic!("BAREMETAL_REQUIRE_ISA: {e}"));
        assert!(
            isa.is_supported(),
            "BAREMETAL_REQUIRE_ISA names {isa}, which this CPU/target does not support"
        );
        assert!(Kernels::for_isa(isa).is_some(), "{isa}");
    }
}

#[test]
fn isa_names_round_trip() {
    for &isa in Isa::all() {
        assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
        assert_eq!(isa.to_string(), isa.name());
    }
    assert_eq!("AVX512".parse::<Isa>(), Ok(Isa::Avx512));
    assert_eq!("avx2".parse::<Isa>(), Ok(Isa::Avx2));
    let err = "sse9".parse::<Isa>().unwrap_err().to_string();
    assert!(err.contains("sse9") && err.contains("avx512"), "{err}");
}

#[test]
fn kernels_debug_names_model_and_isa() {
    let text = format!("{:?}", Kernels::detect());
    assert!(text.contains(generated::MODEL_NAME), "{text}");
    assert!(text.contains(&format!("{:?}", Isa::best())), "{text}");
}
