/* bcryptprimitives.dll for Wine 8 (Debian 12), which lacks it: Rust's
 * standard library on Windows draws random bytes with ProcessPrng from this
 * DLL. This one answers from RtlGenRandom (SystemFunction036), which Wine
 * has. Only the test of the Windows build under Wine uses it; Windows has
 * the real DLL. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG part = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, part)) return FALSE;
        data += part; len -= part;
    }
    return TRUE;
}
