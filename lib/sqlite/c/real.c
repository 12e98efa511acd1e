/* REAL values between Kiln's Rust and SQLite's C on every target.
 *
 * On x86_64 the kernel's Rust is soft-float (floating point travels in
 * integer registers) while C passes double in SSE registers, so a double
 * must not cross between them. These wrappers carry a double's IEEE 754
 * bits as a uint64_t instead, which both sides pass alike; Rust turns them
 * into an f64 with f64::from_bits. */
#include <stdint.h>
#include <string.h>
#include "sqlite3.h"

uint64_t kiln_sqlite3_column_double_bits(sqlite3_stmt *stmt, int col)
{
	double d = sqlite3_column_double(stmt, col);
	uint64_t bits;
	memcpy(&bits, &d, sizeof bits);
	return bits;
}

int kiln_sqlite3_bind_double_bits(sqlite3_stmt *stmt, int param, uint64_t bits)
{
	double d;
	memcpy(&d, &bits, sizeof d);
	return sqlite3_bind_double(stmt, param, d);
}
