# Provides TensorRT's public C++ headers (NvInfer*.h). No TensorRT library is linked: the plugin
# library only implements TensorRT's abstract interfaces and is loaded by TensorRT itself.
#
# Result: TENSORRT_INCLUDE_DIR (cache path, when given), FF_TENSORRT_HEADERS_INCLUDE_DIR,
# FF_TENSORRT_HEADERS_VERSION ("major.minor.patch") with FF_TENSORRT_HEADERS_VERSION_MAJOR/_MINOR/_PATCH,
# and the INTERFACE target fourierformer::tensorrt_headers.
#
# Where the headers come from, first match wins:
#   -DTENSORRT_INCLUDE_DIR=<dir>   a real installation (the directory holding NvInfer.h)
#   the TensorRT SDK               NvInfer.h under $TENSORRT_ROOT/include (CMake or environment variable)
#                                  or /usr/include/x86_64-linux-gnu (Debian/Ubuntu libnvinfer-dev)
#   otherwise                      download the pinned wheel kernel-lens==2.0.1 (it bundles TensorRT's
#                                  public headers) with `python -m pip download` into the build tree,
#                                  check its sha256 and extract only kernel_lens/include/tensorrt/*.
#                                  Python3_EXECUTABLE selects the interpreter (pip must be available).
include_guard(GLOBAL)

set(TENSORRT_INCLUDE_DIR "" CACHE PATH
    "Directory containing TensorRT's NvInfer.h (empty: use the TensorRT SDK if found, else fetch the headers)")

set(_ff_trt_wheel_package "kernel-lens")
set(_ff_trt_wheel_version "2.0.1")
set(_ff_trt_wheel_sha256 "07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0")
set(_ff_trt_wheel_subdir "kernel_lens/include/tensorrt")

function(_ff_trt_fail)
  string(JOIN "" what ${ARGV})  # callers may split the text over several arguments
  message(FATAL_ERROR
    "FourierFormer: could not obtain TensorRT headers: ${what}\n"
    "Either point CMake at an installation with -DTENSORRT_INCLUDE_DIR=<dir containing NvInfer.h> "
    "(e.g. <TensorRT tarball>/include, or /usr/include/x86_64-linux-gnu with libnvinfer-dev), set "
    "TENSORRT_ROOT to the TensorRT SDK, or fix the download of ${_ff_trt_wheel_package}==${_ff_trt_wheel_version} "
    "(needs a Python with pip: pass -DPython3_EXECUTABLE=<python>, and access to PyPI or a configured mirror). "
    "Or configure with -DFF_BUILD_TENSORRT=OFF to skip the TensorRT plugin.")
endfunction()

function(_ff_fetch_trt_headers out_dir)
  set(root "${CMAKE_BINARY_DIR}/_deps/tensorrt-headers")
  set(extract "${root}/extract")
  set(incdir "${extract}/${_ff_trt_wheel_subdir}")
  set(stamp "${root}/extracted-${_ff_trt_wheel_sha256}.stamp")
  if(EXISTS "${stamp}" AND EXISTS "${incdir}/NvInfer.h" AND EXISTS "${incdir}/NvInferVersion.h")
    set(${out_dir} "${incdir}" PARENT_SCOPE)
    return()
  endif()

  find_package(Python3 COMPONENTS Interpreter)
  if(NOT Python3_Interpreter_FOUND)
    _ff_trt_fail("no Python interpreter found to run pip (pass -DPython3_EXECUTABLE=<python with pip>)")
  endif()

  set(wheel_name "kernel_lens-${_ff_trt_wheel_version}-py3-none-any.whl")
  file(GLOB wheels "${root}/kernel_lens-${_ff_trt_wheel_version}-*.whl")
  if(NOT wheels)
    message(STATUS "FourierFormer: downloading TensorRT headers (${_ff_trt_wheel_package}==${_ff_trt_wheel_version}) "
                   "with ${Python3_EXECUTABLE} -m pip download")
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check
              "${_ff_trt_wheel_package}==${_ff_trt_wheel_version}" -d "${root}"
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      _ff_trt_fail("'${Python3_EXECUTABLE} -m pip download ${_ff_trt_wheel_package}==${_ff_trt_wheel_version}' "
                   "failed (${rc}):\n${out}\n${err}")
    endif()
    file(GLOB wheels "${root}/kernel_lens-${_ff_trt_wheel_version}-*.whl")
  endif()
  list(LENGTH wheels nwheels)
  if(NOT nwheels EQUAL 1)
    _ff_trt_fail("expected one ${wheel_name} in ${root}, found ${nwheels}: ${wheels}")
  endif()
  list(GET wheels 0 wheel)
  file(SHA256 "${wheel}" sha)
  if(NOT sha STREQUAL _ff_trt_wheel_sha256)
    file(REMOVE "${wheel}")
    _ff_trt_fail("${wheel} has sha256 ${sha}, expected ${_ff_trt_wheel_sha256} (removed; not trusted)")
  endif()

  file(REMOVE_RECURSE "${extract}")
  file(MAKE_DIRECTORY "${extract}")
  # A wheel is a zip archive; extract only the header directory.
  execute_process(COMMAND "${CMAKE_COMMAND}" -E tar xf "${wheel}" "${_ff_trt_wheel_subdir}"
    WORKING_DIRECTORY "${extract}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${incdir}/NvInfer.h" OR NOT EXISTS "${incdir}/NvInferVersion.h")
    _ff_trt_fail("extracting ${_ff_trt_wheel_subdir} from ${wheel} failed (${rc}) or gave no NvInfer.h / "
                 "NvInferVersion.h:\n${out}\n${err}")
  endif()
  file(WRITE "${stamp}" "${wheel}\n")
  set(${out_dir} "${incdir}" PARENT_SCOPE)
endfunction()

# Value of `#define <name> <value>` in the header text, following one level of macro indirection
# (TensorRT 10 defines NV_TENSORRT_MAJOR as TRT_MAJOR_ENTERPRISE, older ones as a number).
function(_ff_trt_version_component text name out)
  set(value "")
  set(symbol "${name}")
  foreach(_depth RANGE 3)
    if(text MATCHES "#[ \t]*define[ \t]+${symbol}[ \t]+([A-Za-z0-9_]+)")
      set(value "${CMAKE_MATCH_1}")
      if(value MATCHES "^[0-9]+$")
        set(${out} "${value}" PARENT_SCOPE)
        return()
      endif()
      set(symbol "${value}")
    else()
      break()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

if(TENSORRT_INCLUDE_DIR)
  if(NOT EXISTS "${TENSORRT_INCLUDE_DIR}/NvInfer.h")
    message(FATAL_ERROR
      "FourierFormer: TENSORRT_INCLUDE_DIR=${TENSORRT_INCLUDE_DIR} has no NvInfer.h; set it to the directory "
      "holding TensorRT's C++ headers (NvInfer.h, NvInferVersion.h), or leave it empty to find or fetch them.")
  endif()
  set(_ff_trt_inc "${TENSORRT_INCLUDE_DIR}")
  set(_ff_trt_source "TENSORRT_INCLUDE_DIR")
else()
  set(_ff_trt_sdk_dirs "")
  if(TENSORRT_ROOT)
    list(APPEND _ff_trt_sdk_dirs "${TENSORRT_ROOT}/include")
  endif()
  if(DEFINED ENV{TENSORRT_ROOT})
    list(APPEND _ff_trt_sdk_dirs "$ENV{TENSORRT_ROOT}/include")
  endif()
  list(APPEND _ff_trt_sdk_dirs "/usr/include/x86_64-linux-gnu")
  set(_ff_trt_inc "")
  foreach(_dir IN LISTS _ff_trt_sdk_dirs)
    if(EXISTS "${_dir}/NvInfer.h" AND EXISTS "${_dir}/NvInferVersion.h")
      set(_ff_trt_inc "${_dir}")
      set(_ff_trt_source "TensorRT SDK")
      break()
    endif()
  endforeach()
  if(NOT _ff_trt_inc)
    _ff_fetch_trt_headers(_ff_trt_inc)
    set(_ff_trt_source "${_ff_trt_wheel_package}==${_ff_trt_wheel_version}")
  endif()
endif()

if(NOT EXISTS "${_ff_trt_inc}/NvInferVersion.h")
  message(FATAL_ERROR "FourierFormer: ${_ff_trt_inc} has NvInfer.h but no NvInferVersion.h; set TENSORRT_INCLUDE_DIR "
                      "to a complete TensorRT include directory.")
endif()
file(READ "${_ff_trt_inc}/NvInferVersion.h" _ff_trt_version_text)
_ff_trt_version_component("${_ff_trt_version_text}" NV_TENSORRT_MAJOR FF_TENSORRT_HEADERS_VERSION_MAJOR)
_ff_trt_version_component("${_ff_trt_version_text}" NV_TENSORRT_MINOR FF_TENSORRT_HEADERS_VERSION_MINOR)
_ff_trt_version_component("${_ff_trt_version_text}" NV_TENSORRT_PATCH FF_TENSORRT_HEADERS_VERSION_PATCH)
if(FF_TENSORRT_HEADERS_VERSION_MAJOR STREQUAL "" OR FF_TENSORRT_HEADERS_VERSION_MINOR STREQUAL ""
   OR FF_TENSORRT_HEADERS_VERSION_PATCH STREQUAL "")
  message(FATAL_ERROR "FourierFormer: could not read NV_TENSORRT_MAJOR/MINOR/PATCH from ${_ff_trt_inc}/NvInferVersion.h; "
                      "set TENSORRT_INCLUDE_DIR to the include directory of a TensorRT 10 or newer installation.")
endif()
set(FF_TENSORRT_HEADERS_VERSION
    "${FF_TENSORRT_HEADERS_VERSION_MAJOR}.${FF_TENSORRT_HEADERS_VERSION_MINOR}.${FF_TENSORRT_HEADERS_VERSION_PATCH}")
if(FF_TENSORRT_HEADERS_VERSION_MAJOR LESS 10)
  message(FATAL_ERROR "FourierFormer: TensorRT headers ${FF_TENSORRT_HEADERS_VERSION} in ${_ff_trt_inc} are too old: "
                      "the plugin uses IPluginV3 (TensorRT >= 10); set TENSORRT_INCLUDE_DIR to newer headers.")
endif()
set(FF_TENSORRT_HEADERS_INCLUDE_DIR "${_ff_trt_inc}")
message(STATUS "FourierFormer: TensorRT headers ${FF_TENSORRT_HEADERS_VERSION} (${_ff_trt_source}): ${_ff_trt_inc}")

if(NOT TARGET fourierformer::tensorrt_headers)
  add_library(fourierformer_tensorrt_headers INTERFACE)
  target_include_directories(fourierformer_tensorrt_headers SYSTEM INTERFACE "${_ff_trt_inc}")
  target_compile_definitions(fourierformer_tensorrt_headers INTERFACE
    FF_TENSORRT_HEADERS_VERSION="${FF_TENSORRT_HEADERS_VERSION}"
    FF_TENSORRT_HEADERS_VERSION_MAJOR=${FF_TENSORRT_HEADERS_VERSION_MAJOR})
  add_library(fourierformer::tensorrt_headers ALIAS fourierformer_tensorrt_headers)
endif()
