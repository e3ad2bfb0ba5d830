# ccache for every compile when present. PCH users need the sloppiness settings
# below, or ccache refuses to cache translation units that include the PCH.
if(ENSTACK_USE_CCACHE)
  find_program(ENSTACK_CCACHE ccache)
  if(ENSTACK_CCACHE)
    set(CMAKE_CXX_COMPILER_LAUNCHER
        ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
        ${ENSTACK_CCACHE})
    message(STATUS "enstack: ccache ${ENSTACK_CCACHE}")
  else()
    message(STATUS "enstack: ccache not found; rebuilds will be slower")
  endif()
endif()
