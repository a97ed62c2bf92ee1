//! Windows access lists (a file for this user alone, and whether a file's
//! list allows anyone else) and whether a process runs. The only unsafe
//! code of the program: calls of Win32 functions that nothing in the
//! dependency tree wraps.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStrExt as _;
use std::os::windows::io::AsRawHandle as _;
use std::path::Path;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, GENERIC_ALL, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    EXPLICIT_ACCESS_W, GetNamedSecurityInfoW, NO_MULTIPLE_TRUSTEE, SE_FILE_OBJECT, SET_ACCESS,
    SetEntriesInAclW, SetSecurityInfo, TRUSTEE_IS_SID, TRUSTEE_IS_USER, TRUSTEE_W,
};
use windows_sys::Win32::Security::{
    ACE_HEADER, ACL, ACL_SIZE_INFORMATION, AclSizeInformation, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
    GetAclInformation, GetTokenInformation, NO_INHERITANCE, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;

pub(super) fn process_alive(pid: u32) -> Option<bool> {
    use windows_sys::Win32::Foundation::{ERROR_INVALID_PARAMETER, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: the handle is closed before returning.
    unsafe {
        let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            // No such process; any other refusal (another user's) cannot tell.
            let error = io::Error::last_os_error();
            return (error.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32)).then_some(false);
        }
        let mut code = 0u32;
        let ok = GetExitCodeProcess(process, &mut code);
        CloseHandle(process);
        (ok != 0).then_some(code == STILL_ACTIVE as u32)
    }
}

/// The security identifier of the user this process runs as (the
/// buffer holds the TOKEN_USER the SID points into).
fn this_user() -> io::Result<Vec<u64>> {
    // SAFETY: the token handle is closed before returning; the buffer
    // is sized by the first call and u64-aligned for TOKEN_USER.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut needed = 0u32;
        GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut needed);
        let mut buffer = vec![0u64; (needed as usize).div_ceil(8).max(1)];
        let ok = GetTokenInformation(token, TokenUser, buffer.as_mut_ptr().cast(), needed, &mut needed);
        let error = io::Error::last_os_error();
        CloseHandle(token);
        if ok == 0 {
            return Err(error);
        }
        Ok(buffer)
    }
}

fn sid_of(user: &[u64]) -> *mut c_void {
    // SAFETY: `user` holds a TOKEN_USER written by GetTokenInformation.
    unsafe { (*user.as_ptr().cast::<TOKEN_USER>()).User.Sid }
}

/// Replaces the file's access list with one entry: full access for
/// this user, nothing inherited.
pub(super) fn owner_only(file: &File) -> io::Result<()> {
    let user = this_user()?;
    let access = EXPLICIT_ACCESS_W {
        grfAccessPermissions: GENERIC_ALL,
        grfAccessMode: SET_ACCESS,
        grfInheritance: NO_INHERITANCE,
        Trustee: TRUSTEE_W {
            pMultipleTrustee: std::ptr::null_mut(),
            MultipleTrusteeOperation: NO_MULTIPLE_TRUSTEE,
            TrusteeForm: TRUSTEE_IS_SID,
            TrusteeType: TRUSTEE_IS_USER,
            ptstrName: sid_of(&user).cast(),
        },
    };
    // SAFETY: the new list is freed with LocalFree as documented; the
    // handle is the open file's.
    unsafe {
        let mut list: *mut ACL = std::ptr::null_mut();
        let status = SetEntriesInAclW(1, &access, std::ptr::null(), &mut list);
        if status != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
        let status = SetSecurityInfo(
            file.as_raw_handle(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            list,
            std::ptr::null(),
        );
        LocalFree(list.cast());
        if status != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
    }
    Ok(())
}

/// Whether the file's access list allows anyone but this user (no list
/// at all allows everyone).
pub(super) fn others_allowed(path: &Path) -> io::Result<bool> {
    let user = this_user()?;
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    // SAFETY: the descriptor is freed with LocalFree; the list points
    // into it and is read only before that; each ACE is read by its
    // header, then as an ACCESS_ALLOWED_ACE whose SID starts 8 bytes in.
    unsafe {
        let mut list: *mut ACL = std::ptr::null_mut();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        let status = GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut list,
            std::ptr::null_mut(),
            &mut descriptor,
        );
        if status != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
        let mut others = list.is_null();
        if !others {
            let mut size: ACL_SIZE_INFORMATION = std::mem::zeroed();
            let info_len = std::mem::size_of::<ACL_SIZE_INFORMATION>() as u32;
            if GetAclInformation(list, (&raw mut size).cast(), info_len, AclSizeInformation) == 0 {
                others = true;
            } else {
                for index in 0..size.AceCount {
                    let mut ace: *mut c_void = std::ptr::null_mut();
                    if GetAce(list, index, &mut ace) == 0 {
                        others = true;
                        break;
                    }
                    let header = &*ace.cast::<ACE_HEADER>();
                    if header.AceType == ACCESS_ALLOWED_ACE_TYPE {
                        let sid = ace.cast::<u8>().add(8).cast::<c_void>();
                        if EqualSid(sid, sid_of(&user)) == 0 {
                            others = true;
                            break;
                        }
                    }
                }
            }
        }
        LocalFree(descriptor);
        Ok(others)
    }
}
