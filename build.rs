// The interpreter version's cfgs (Py_3_11, ...) for the few C-API calls that
// exist only on newer Pythons.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
