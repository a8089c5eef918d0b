#![no_std]
extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

extern crate self as portcullis_sdk;

pub mod bindings {
    wit_bindgen::generate!({
        world: "policy-component",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "portcullis_sdk::bindings",
        export_macro_name: "export",
        debug: true,
    });
}
