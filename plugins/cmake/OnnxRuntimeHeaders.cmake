# Provides ONNX Runtime's C/C++ API headers (no ORT library is linked: custom-op
# libraries use ORT_API_MANUAL_INIT and receive the API table at registration).
#
# Result: ONNXRUNTIME_INCLUDE_DIR (cache path) and the INTERFACE target
# fourierformer::onnxruntime_headers.
#
#   -DONNXRUNTIME_INCLUDE_DIR=<dir>   use a real installation (dir holding onnxruntime_c_api.h)
#   otherwise                          download Debian trixie's libonnxruntime-dev (headers only)
#                                      with apt-get into the build tree, using a private sources
#                                      list, lists and cache dir (the system's apt setup is never
#                                      modified), check its sha256 and unpack it with dpkg -x.
#   -DFF_DEBIAN_MIRROR=<uri>          archive URI to use (default: the first one configured in
#                                      /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)
include_guard(GLOBAL)

set(ONNXRUNTIME_INCLUDE_DIR "" CACHE PATH
    "Directory containing onnxruntime_c_api.h / onnxruntime_cxx_api.h (empty: fetch Debian's libonnxruntime-dev)")
set(FF_DEBIAN_MIRROR "" CACHE STRING
    "Debian archive URI for fetching libonnxruntime-dev (empty: read from the system's apt sources)")

set(_ff_ort_deb_package "libonnxruntime-dev")
set(_ff_ort_deb_version "1.21.0+dfsg-1")
set(_ff_ort_deb_suite "trixie")
set(_ff_ort_deb_sha256 "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")

function(_ff_fail)
  string(JOIN "" what ${ARGV})  # callers may split the text over several arguments
  message(FATAL_ERROR
    "FourierFormer: could not obtain ONNX Runtime headers: ${what}\n"
    "Either point CMake at an installation with -DONNXRUNTIME_INCLUDE_DIR=<dir containing "
    "onnxruntime_cxx_api.h> (e.g. from an onnxruntime release tarball or a "
    "libonnxruntime-dev package), or fix the download (set -DFF_DEBIAN_MIRROR=<Debian archive "
    "URI> if the system's apt sources are unusable).")
endfunction()

function(_ff_fetch_ort_headers out_dir)
  set(root "${CMAKE_BINARY_DIR}/_deps/onnxruntime-headers")
  set(extract "${root}/extract")
  set(incdir "${extract}/usr/include/onnxruntime")
  set(stamp "${root}/extracted-${_ff_ort_deb_sha256}.stamp")
  if(EXISTS "${stamp}" AND EXISTS "${incdir}/onnxruntime_cxx_api.h")
    set(${out_dir} "${incdir}" PARENT_SCOPE)
    return()
  endif()

  find_program(FF_APT_GET apt-get)
  find_program(FF_DPKG dpkg)
  if(NOT FF_APT_GET OR NOT FF_DPKG)
    _ff_fail("apt-get and dpkg are required to fetch ${_ff_ort_deb_package} (not a Debian-like system?)")
  endif()

  # Archive URI: explicit override, else the system's first configured Debian archive.
  set(mirror "${FF_DEBIAN_MIRROR}")
  if(NOT mirror AND EXISTS "/etc/apt/sources.list.d/debian.sources")
    file(STRINGS "/etc/apt/sources.list.d/debian.sources" _lines REGEX "^[ \t]*URIs:")
    if(_lines)
      list(GET _lines 0 _line)
      string(REGEX REPLACE "^[ \t]*URIs:[ \t]*([^ \t]+).*$" "\\1" mirror "${_line}")
    endif()
  endif()
  if(NOT mirror AND EXISTS "/etc/apt/sources.list")
    file(STRINGS "/etc/apt/sources.list" _lines REGEX "^[ \t]*deb[ \t]")
    foreach(_line IN LISTS _lines)
      # deb [options] <uri> <suite> ...
      string(REGEX REPLACE "^[ \t]*deb[ \t]+(\\[[^]]*\\][ \t]+)?([^ \t]+).*$" "\\2" mirror "${_line}")
      if(mirror)
        break()
      endif()
    endforeach()
  endif()
  if(NOT mirror)
    _ff_fail("no Debian archive URI found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")
  endif()

  set(keyring "/usr/share/keyrings/debian-archive-keyring.gpg")
  if(NOT EXISTS "${keyring}")
    _ff_fail("${keyring} is missing (install debian-archive-keyring)")
  endif()

  set(apt "${root}/apt")
  file(REMOVE_RECURSE "${apt}" "${extract}")
  file(MAKE_DIRECTORY "${apt}/lists/partial" "${apt}/cache/archives/partial" "${apt}/download")
  file(WRITE "${apt}/sources.list" "deb [signed-by=${keyring}] ${mirror} ${_ff_ort_deb_suite} main\n")
  set(apt_opts
    -o "Dir::Etc::SourceList=${apt}/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=${apt}/lists"
    -o "Dir::Cache=${apt}/cache")

  message(STATUS "FourierFormer: fetching ${_ff_ort_deb_package}=${_ff_ort_deb_version} from ${mirror} (${_ff_ort_deb_suite})")
  execute_process(COMMAND "${FF_APT_GET}" ${apt_opts} update
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    _ff_fail("'apt-get update' with a private sources list (${apt}/sources.list) failed (${rc}):\n${out}\n${err}")
  endif()
  execute_process(COMMAND "${FF_APT_GET}" ${apt_opts} download "${_ff_ort_deb_package}=${_ff_ort_deb_version}"
    WORKING_DIRECTORY "${apt}/download"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    _ff_fail("'apt-get download ${_ff_ort_deb_package}=${_ff_ort_deb_version}' failed (${rc}):\n${out}\n${err}")
  endif()
  file(GLOB debs "${apt}/download/${_ff_ort_deb_package}_*.deb")
  list(LENGTH debs ndebs)
  if(NOT ndebs EQUAL 1)
    _ff_fail("expected one ${_ff_ort_deb_package} .deb in ${apt}/download, found ${ndebs}")
  endif()
  list(GET debs 0 deb)
  file(SHA256 "${deb}" sha)
  if(NOT sha STREQUAL _ff_ort_deb_sha256)
    _ff_fail("${deb} has sha256 ${sha}, expected ${_ff_ort_deb_sha256}")
  endif()
  execute_process(COMMAND "${FF_DPKG}" -x "${deb}" "${extract}" RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${incdir}/onnxruntime_cxx_api.h")
    _ff_fail("'dpkg -x ${deb}' failed or did not produce ${incdir}/onnxruntime_cxx_api.h: ${err}")
  endif()
  file(WRITE "${stamp}" "${deb}\n")
  set(${out_dir} "${incdir}" PARENT_SCOPE)
endfunction()

if(ONNXRUNTIME_INCLUDE_DIR)
  if(NOT EXISTS "${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_cxx_api.h")
    message(FATAL_ERROR
      "FourierFormer: ONNXRUNTIME_INCLUDE_DIR=${ONNXRUNTIME_INCLUDE_DIR} has no onnxruntime_cxx_api.h; "
      "set it to the directory holding ONNX Runtime's C/C++ API headers, or leave it empty to fetch them.")
  endif()
  set(_ff_ort_inc "${ONNXRUNTIME_INCLUDE_DIR}")
else()
  _ff_fetch_ort_headers(_ff_ort_inc)
endif()
message(STATUS "FourierFormer: ONNX Runtime headers: ${_ff_ort_inc}")

if(NOT TARGET fourierformer::onnxruntime_headers)
  add_library(fourierformer_onnxruntime_headers INTERFACE)
  target_include_directories(fourierformer_onnxruntime_headers SYSTEM INTERFACE "${_ff_ort_inc}")
  add_library(fourierformer::onnxruntime_headers ALIAS fourierformer_onnxruntime_headers)
endif()
